"""Replay: run the sequential comparison many times on a pool with recorded human votes.

A simulated annotator answers each request with one of the pair's recorded votes, drawn uniformly at random
(votes are already oriented: 1 = tuned better, 0.5 = tie, 0 = base better). theta is the full-pool mean of
the pairs' mean votes. When some pair has disagreeing votes the engine runs with label_noise=True, so its
estimand is that theta and not the mean of whichever votes were drawn (see sampler.engine).

Slices: a pool may tag its pairs (``ReplayPool.slices``); then every run also gives a verdict per slice of
interest from the same draws (sampler.slices), alpha is split by Bonferroni over the overall verdict and the
slices (``slice_alpha``), and a run goes on after the overall verdict until every slice's verdict is final.
``RunOutcome.overall_labels`` is the label count at the overall verdict, ``labels`` the count at the end.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from tiebreak.sampler.calibration import PRIOR_PENALTY, JudgeCalibration, prior_calibration
from tiebreak.sampler.engine import Comparison, ComparisonConfig
from tiebreak.sampler.slices import membership_matrix, slice_alpha


@dataclass(frozen=True)
class ReplayPool:
    votes: tuple[np.ndarray, ...]   # per pair, its recorded votes in {0, 0.5, 1}
    judge_votes: np.ndarray         # (N, J) P(tuned better), NaN = missing
    slices: tuple[tuple[str, ...], ...] | None = None  # per pair, the slices it belongs to (may be empty)

    @property
    def theta(self) -> float:
        return float(np.mean([v.mean() for v in self.votes]))

    def slice_names(self) -> list[str]:
        return sorted({s for tags in self.slices or () for s in tags})

    def slice_theta(self, name: str) -> float:
        """Full-pool mean of the mean votes of the slice's pairs."""
        return float(np.mean([v.mean() for v, tags in zip(self.votes, self.slices or (), strict=True)
                              if name in tags]))

    @property
    def noisy(self) -> bool:
        return any(np.ptp(v) > 0 for v in self.votes)

    def symmetrized(self) -> ReplayPool:
        """Every pair twice, the second time with A/B swapped: theta = 1/2 exactly."""
        votes = self.votes + tuple(1.0 - v for v in self.votes)
        slices = self.slices + self.slices if self.slices is not None else None
        return ReplayPool(votes, np.vstack([self.judge_votes, 1.0 - self.judge_votes]), slices)


@dataclass(frozen=True)
class RunOutcome:
    decision: str
    labels: int
    estimate: float
    lower: float
    upper: float
    overall_labels: int = 0                               # labels when the overall verdict was reached
    slices: tuple[tuple[str, str, int], ...] = ()         # (slice, decision, labels of its pairs)


@dataclass(frozen=True)
class ReplaySummary:
    theta: float
    outcomes: tuple[RunOutcome, ...]
    slice_theta: dict[str, float] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        out = {"better": 0, "worse": 0, "equivalent": 0, "undecided": 0}
        for o in self.outcomes:
            out[o.decision] += 1
        return out

    def wrong(self, symmetrized: bool = False) -> int:
        """better/worse verdicts whose sign disagrees with theta (all of them on a symmetrized pool)."""
        bad = 0
        for o in self.outcomes:
            if o.decision == "better" and (symmetrized or self.theta <= 0.5):
                bad += 1
            elif o.decision == "worse" and (symmetrized or self.theta >= 0.5):
                bad += 1
        return bad

    @property
    def labels(self) -> np.ndarray:
        return np.array([o.labels for o in self.outcomes])

    @property
    def overall_labels(self) -> np.ndarray:
        return np.array([o.overall_labels for o in self.outcomes])

    def slice_counts(self, name: str) -> dict[str, int]:
        out = {"better": 0, "worse": 0, "equivalent": 0, "undecided": 0}
        for o in self.outcomes:
            for s, d, _ in o.slices:
                if s == name:
                    out[d] += 1
        return out

    def slice_wrong(self, name: str, symmetrized: bool = False) -> int:
        theta = self.slice_theta[name]
        return sum(1 for o in self.outcomes for s, d, _ in o.slices if s == name and _is_wrong(d, theta, symmetrized))

    def slice_labels(self, name: str) -> np.ndarray:
        return np.array([n for o in self.outcomes for s, _, n in o.slices if s == name])

    def family_wrong_runs(self, symmetrized: bool = False) -> int:
        """Runs in which the overall verdict or any slice verdict is wrong (the family-wise error)."""
        return sum(1 for o in self.outcomes
                   if _is_wrong(o.decision, self.theta, symmetrized)
                   or any(_is_wrong(d, self.slice_theta[s], symmetrized) for s, d, _ in o.slices))


def _is_wrong(decision: str, theta: float, symmetrized: bool) -> bool:
    if decision == "better":
        return symmetrized or theta <= 0.5
    if decision == "worse":
        return symmetrized or theta >= 0.5
    return False


def replay_once(pool: ReplayPool, config: ComparisonConfig, rng: np.random.Generator,
                prior: JudgeCalibration | None = None, slices: list[str] | None = None) -> RunOutcome:
    """One sequential run; the annotator and the sampler share the run's Generator (deterministic).

    slices: the slices of interest (their verdicts come from the same draws); config.alpha is then already
    the per-question alpha (``replay`` splits it)."""
    judge_votes = pool.judge_votes if config.method != "classical" else None
    cmp = Comparison(judge_votes, n_items=len(pool.votes), config=config, rng=rng,
                     prior=prior if config.method != "classical" else None)
    if slices:
        names, member = membership_matrix(list(pool.slices or ()), slices)
        cmp.set_slices(names, member)
    overall_labels = None
    while not cmp.finished:
        if overall_labels is None and cmp.decision.final:
            overall_labels = len(cmp.labels)
        items = cmp.next_items(1)
        if not items:
            break
        item = items[0]
        votes = pool.votes[item]
        cmp.record_label(item, float(votes[rng.integers(votes.size)]) if votes.size > 1 else float(votes[0]))
    st = cmp.status()
    decision = st.decision.value if st.decision.final else "undecided"
    per_slice = tuple((name, s.decision.value if s.decision.final else "undecided", s.labels)
                      for name, s in cmp.slice_statuses().items())
    return RunOutcome(decision, st.labels, st.estimate, st.lower, st.upper,
                      st.labels if overall_labels is None else overall_labels, per_slice)


def replay(pool: ReplayPool, config: ComparisonConfig, runs: int, seed: int,
           prior: JudgeCalibration | None = None, slices: list[str] | None = None) -> ReplaySummary:
    """`runs` independent runs; run r uses Generator(PCG64(seed, r)) so any run can be reproduced alone.

    The replayed pool is closed by construction (no pairs are ever added), so every run is a closed-pool
    comparison at the full alpha (pool_growth_alpha_share = 0). With slices (names present in pool.slices)
    config.alpha is the family's alpha: each of the 1 + K questions is tested at config.alpha / (1 + K)."""
    config = replace(config, pool_growth_alpha_share=0.0)
    if pool.noisy and not config.label_noise:
        config = replace(config, label_noise=True)
    if slices:
        missing = [s for s in slices if s not in pool.slice_names()]
        if missing:
            raise ValueError(f"slice(s) {', '.join(missing)} tag no pair of this pool")
        config = replace(config, alpha=slice_alpha(config.alpha, len(slices)))
    seeds = np.random.SeedSequence(seed).spawn(runs)
    outcomes = tuple(replay_once(pool, config, np.random.default_rng(s), prior, slices) for s in seeds)
    return ReplaySummary(pool.theta, outcomes, {s: pool.slice_theta(s) for s in slices or ()})


def prior_from_pools(pools: list[ReplayPool], penalty: float = PRIOR_PENALTY) -> JudgeCalibration:
    """A judge calibration learnt on *other* pools (never the one being replayed): predictable by design. Each
    pool is one comparison (prior_calibration's ``groups``: slopes fitted within pools)."""
    votes = np.vstack([p.judge_votes for p in pools])
    labels = np.concatenate([[v.mean() for v in p.votes] for p in pools])
    groups = np.concatenate([np.full(len(p.votes), k) for k, p in enumerate(pools)])
    return prior_calibration(votes, labels, penalty, groups)
