"""Replay: run the sequential comparison many times on a pool with recorded human votes.

A simulated annotator answers each request with one of the pair's recorded votes, drawn uniformly at random
(votes are already oriented: 1 = tuned better, 0.5 = tie, 0 = base better). theta is the full-pool mean of
the pairs' mean votes. When some pair has disagreeing votes the engine runs with label_noise=True, so its
estimand is that theta and not the mean of whichever votes were drawn (see sampler.engine).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from sampler.calibration import JudgeCalibration, fit_calibration, judge_features
from sampler.engine import Comparison, ComparisonConfig


@dataclass(frozen=True)
class ReplayPool:
    votes: tuple[np.ndarray, ...]   # per pair, its recorded votes in {0, 0.5, 1}
    judge_votes: np.ndarray         # (N, J) P(tuned better), NaN = missing

    @property
    def theta(self) -> float:
        return float(np.mean([v.mean() for v in self.votes]))

    @property
    def noisy(self) -> bool:
        return any(np.ptp(v) > 0 for v in self.votes)

    def symmetrized(self) -> ReplayPool:
        """Every pair twice, the second time with A/B swapped: theta = 1/2 exactly."""
        votes = self.votes + tuple(1.0 - v for v in self.votes)
        return ReplayPool(votes, np.vstack([self.judge_votes, 1.0 - self.judge_votes]))


@dataclass(frozen=True)
class RunOutcome:
    decision: str
    labels: int
    estimate: float
    lower: float
    upper: float


@dataclass(frozen=True)
class ReplaySummary:
    theta: float
    outcomes: tuple[RunOutcome, ...]

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


def replay_once(pool: ReplayPool, config: ComparisonConfig, rng: np.random.Generator,
                prior: JudgeCalibration | None = None) -> RunOutcome:
    """One sequential run; the annotator and the sampler share the run's Generator (deterministic)."""
    judge_votes = pool.judge_votes if config.method != "classical" else None
    cmp = Comparison(judge_votes, n_items=len(pool.votes), config=config, rng=rng,
                     prior=prior if config.method != "classical" else None)
    while not cmp.decision.final:
        items = cmp.next_items(1)
        if not items:
            break
        item = items[0]
        votes = pool.votes[item]
        cmp.record_label(item, float(votes[rng.integers(votes.size)]) if votes.size > 1 else float(votes[0]))
    st = cmp.status()
    decision = st.decision.value if st.decision.final else "undecided"
    return RunOutcome(decision, st.labels, st.estimate, st.lower, st.upper)


def replay(pool: ReplayPool, config: ComparisonConfig, runs: int, seed: int,
           prior: JudgeCalibration | None = None) -> ReplaySummary:
    """`runs` independent runs; run r uses Generator(PCG64(seed, r)) so any run can be reproduced alone.

    The replayed pool is closed by construction (no pairs are ever added), so every run is a closed-pool
    comparison at the full alpha (pool_growth_alpha_share = 0)."""
    config = replace(config, pool_growth_alpha_share=0.0)
    if pool.noisy and not config.label_noise:
        config = replace(config, label_noise=True)
    seeds = np.random.SeedSequence(seed).spawn(runs)
    outcomes = tuple(replay_once(pool, config, np.random.default_rng(s), prior) for s in seeds)
    return ReplaySummary(pool.theta, outcomes)


def prior_from_pools(pools: list[ReplayPool], penalty: float = 20.0) -> JudgeCalibration:
    """A judge calibration learnt on *other* pools (never the one being replayed): predictable by design."""
    feats = np.vstack([judge_features(p.judge_votes) for p in pools])
    labels = np.concatenate([[v.mean() for v in p.votes] for p in pools])
    return fit_calibration(feats, labels, penalty)
