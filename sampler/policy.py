"""Which pair a human labels next: active scores mixed with uniform, without replacement.

Draw I_t from the pairs not drawn yet, R_t, with
    q_t(i) = gamma / |R_t| + (1 - gamma) * s_i / sum_{j in R_t} s_j,
where s_i = sqrt(v(x_i)) is the predicted residual spread |Y - g(x)| of pair i (the variance-optimal
importance-sampling design is q proportional to the conditional residual standard deviation; Neyman 1934,
Zrnic & Candes 2024 "Active statistical inference"). The uniform floor gamma keeps |R_t| q_t(i) >= gamma, so
the importance weight 1 / (|R_t| q_t(i)) <= 1/gamma whatever the scores: bad uncertainty estimates can at most
scale the observation range by 1/gamma. gamma = 1 is uniform sampling without replacement.

Batch selection for several annotators is sequential drawing: each draw removes the pair from R, so no pair is
handed out twice. With replacement (the reference design) R is always the whole pool.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sampler.fenwick import FenwickTree


@dataclass(frozen=True)
class Draw:
    """One draw: the pair, the probability it had, and |R_t| at that moment (both enter the estimator)."""

    item: int
    prob: float
    remaining: int
    max_weight: float = 1.0  # predictable bound on 1 / (remaining * q(i)) over every pair that could be drawn


class WithoutReplacementSampler:
    """Mixture of uniform and score-proportional sampling over the not-yet-drawn pairs; O(log N) per draw."""

    def __init__(self, n_items: int, scores: np.ndarray | None, uniform_floor: float,
                 drawn: np.ndarray | None = None, with_replacement: bool = False) -> None:
        if not 0 < uniform_floor <= 1:
            raise ValueError("uniform_floor (gamma) must lie in (0, 1]")
        self.gamma = float(uniform_floor)
        self.n_items = int(n_items)
        self.with_replacement = bool(with_replacement)  # then R is always the whole pool
        alive = np.ones(self.n_items) if drawn is None else (~np.asarray(drawn, dtype=bool)).astype(float)
        self._count = FenwickTree(alive)
        self._scores: FenwickTree | None = None
        self._raw_scores: np.ndarray | None = None
        self._score_min = 0.0
        self.set_scores(scores)

    @property
    def remaining(self) -> int:
        return int(round(self._count.total()))

    def set_scores(self, scores: np.ndarray | None) -> None:
        alive = self._count.weights()
        if scores is None or self.gamma >= 1.0:
            self._scores, self._raw_scores = None, None
            return
        raw = np.asarray(scores, dtype=float)
        if raw.shape != (self.n_items,) or np.any(raw < 0) or not np.all(np.isfinite(raw)):
            raise ValueError("scores must be finite, non-negative, one per pair")
        self._raw_scores = raw
        self._scores = FenwickTree(raw * alive)
        live = raw[alive > 0]
        # only grows as pairs leave R, so a value computed now stays a valid lower bound
        self._score_min = float(live.min()) if live.size else 0.0

    def probability(self, item: int) -> float:
        rem = self._count.total()
        total = self._scores.total() if self._scores is not None else 0.0
        if total <= 0:
            return 1.0 / rem
        return float(self.gamma / rem + (1 - self.gamma) * self._scores.weight(item) / total)  # type: ignore[union-attr]

    def max_weight(self) -> float:
        """max over i in R of 1 / (|R| q(i)) = 1 / (gamma + (1 - gamma) |R| s_min / sum_R s) (1 if uniform)."""
        total = self._scores.total() if self._scores is not None else 0.0
        if total <= 0:
            return 1.0
        return 1.0 / (self.gamma + (1 - self.gamma) * self.remaining * self._score_min / total)

    def draw(self, rng: np.random.Generator) -> Draw:
        rem = self.remaining
        if rem == 0:
            raise ValueError("every pair has been drawn")
        max_weight = self.max_weight()
        use_scores = self._scores is not None and self._scores.total() > 0 and rng.random() >= self.gamma
        item = self._scores.sample(rng) if use_scores else self._count.sample(rng)  # type: ignore[union-attr]
        prob = self.probability(item)
        if not self.with_replacement:
            self.remove(item)
        return Draw(int(item), prob, rem, max_weight)

    def remove(self, item: int) -> None:
        self._count.set(item, 0.0)
        if self._scores is not None:
            self._scores.set(item, 0.0)
