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

Exact arithmetic: the scores are stored as integers (s_i * 2^k rounded down, with k chosen so that the pool's
total stays below 2^52), so every Fenwick sum is exact in float64 whatever the order of updates. Sums then
depend only on which pairs are left -- not on the history of removals -- so a reloaded sampler draws exactly
as the original, and the last draw has q = 1 and max weight 1 exactly (float drift used to give
q = 1.0000000000000102 and a max weight below 1, which broke the confidence sequence's deterministic bounds).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tiebreak.sampler.fenwick import FenwickTree


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
        self._int_scores: np.ndarray | None = None
        self.score_min = 0.0   # lower bound of the live integer scores; persisted (it depends on history)
        self.set_scores(scores)

    @property
    def remaining(self) -> int:
        return int(round(self._count.total()))

    def set_scores(self, scores: np.ndarray | None) -> None:
        alive = self._count.weights()
        if scores is None or self.gamma >= 1.0:
            self._scores, self._int_scores = None, None
            return
        raw = np.asarray(scores, dtype=float)
        if raw.shape != (self.n_items,) or np.any(raw < 0) or not np.all(np.isfinite(raw)):
            raise ValueError("scores must be finite, non-negative, one per pair")
        self._int_scores = integer_weights(raw)
        self._scores = FenwickTree(self._int_scores * alive)
        live = self._int_scores[alive > 0]
        # only grows as pairs leave R, so a value computed now stays a valid lower bound
        self.score_min = float(live.min()) if live.size else 0.0

    def scores_in_use(self) -> np.ndarray:
        """The (integer-valued) scores the draws use, proportional to the scores given; ones if uniform."""
        return self._int_scores.copy() if self._int_scores is not None else np.ones(self.n_items)

    def probability(self, item: int) -> float:
        rem = self._count.total()
        total = self._scores.total() if self._scores is not None else 0.0
        if rem == 1.0:
            return 1.0
        if total <= 0:
            return 1.0 / rem
        q = self.gamma / rem + (1 - self.gamma) * self._scores.weight(item) / total  # type: ignore[union-attr]
        return float(min(q, 1.0))

    def max_weight(self) -> float:
        """max over i in R of 1 / (|R| q(i)) = 1 / (gamma + (1 - gamma) |R| s_min / sum_R s) (1 if uniform).

        Never below 1: the |R| values |R| q(i) average 1, so the largest 1 / (|R| q(i)) is at least 1.
        """
        total = self._scores.total() if self._scores is not None else 0.0
        if total <= 0 or self.remaining <= 1:
            return 1.0
        return max(1.0, 1.0 / (self.gamma + (1 - self.gamma) * self.remaining * self.score_min / total))

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


def integer_weights(scores: np.ndarray) -> np.ndarray:
    """floor(s * 2^k) with the largest k that keeps sum(s) * 2^k <= 2^51 (and each positive s >= 1 unit).

    Integers below 2^53 add exactly in float64, so Fenwick sums over these weights carry no rounding.
    Relative change of any score >= 1/2 unit is <= 2^-20 once the pool's total spans >= 2^20 units; k is at
    most 60 so tiny pools keep ~full precision.
    """
    total = float(np.sum(scores))
    if total <= 0:
        return np.zeros_like(scores, dtype=float)
    k = min(60, int(np.floor(51 - np.log2(total))))
    w = np.floor(np.ldexp(scores, k))
    return np.where((scores > 0) & (w == 0), 1.0, w)
