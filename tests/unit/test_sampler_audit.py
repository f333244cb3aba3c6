"""Regression tests for the audit of sampler/ (issue 9): each failed on the code before its fix."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tiebreak.sampler.calibration import fit_calibration
from tiebreak.sampler.confseq import BetSchedule, BettingConfidenceSequence, candidate_grid
from tiebreak.sampler.engine import Comparison, ComparisonConfig, _refit_due, noise_bound
from tiebreak.sampler.policy import WithoutReplacementSampler


def _symmetric_pool(n_half: int, seed: int, judge_noise: float | None = None):
    """theta = 1/2 exactly: every pair also appears with A/B swapped. judge_noise=None: a perfect judge."""
    rng = np.random.default_rng(seed)
    y = rng.choice([0.0, 0.5, 1.0], size=n_half, p=[0.35, 0.2, 0.45])
    y = np.concatenate([y, 1.0 - y])
    if judge_noise is None:
        votes = y[:, None].copy()
    else:
        votes = np.clip(0.5 + 0.6 * (y[:, None] - 0.5) + rng.normal(0, judge_noise, (y.size, 2)), 0, 1)
    return y, votes


def _drive_batched(cmp: Comparison, y: np.ndarray, rng: np.random.Generator, batch: int = 8):
    """Ask for `batch` pairs at a time and answer them in a random order, until final or exhausted."""
    while not cmp.decision.final:
        items = cmp.next_items(batch)
        if not items:
            break
        rng.shuffle(items)
        for i in items:
            if cmp.decision.final:
                break
            cmp.record_label(i, float(y[i]))
    return cmp


# ------------------------------------------------------------------------------------- 1. rounding at the end
def test_a_candidate_on_the_bound_up_to_rounding_is_not_excluded():
    """Last draw of a pool: c(1/2) equals the smallest possible observation; float drift put lo one ulp above
    it (g_bar - g_max * max_weight with max_weight = 0.9999999999999984) and 1/2 was excluded outright."""
    grid = candidate_grid(20, (0.5,))
    j = int(np.flatnonzero(grid == 0.5)[0])
    cs = BettingConfidenceSequence(0.2, grid, BetSchedule())
    null_mean = 2.0 * grid - 1.0          # c(m) = (N m - S) / |R| with N = 2, S = 1, |R| = 1: c(1/2) = 0
    lo = 0.7 - 0.7 * 0.9999999999999984   # ~1e-16 > 0 = c(1/2): rounding, not evidence
    cs.update(0.0, null_mean, lo, 1.7, scale=2.0, mean_lo=0.0, mean_hi=1.0)
    assert not cs.excluded_below[j] and not cs.excluded_above[j]
    cs2 = BettingConfidenceSequence(0.2, grid, BetSchedule())
    hi = 1.0 - 1e-16 * 3                 # the mirror image: c(1/2) = 1 a hair above hi
    cs2.update(1.0, 2.0 * grid, -0.7, hi, scale=2.0, mean_lo=0.0, mean_hi=1.0)
    assert not cs2.excluded_above[j] and not cs2.excluded_below[j]
    # a real violation (c below lo by more than rounding) still excludes
    cs3 = BettingConfidenceSequence(0.2, grid, BetSchedule())
    cs3.update(0.0, null_mean, 1e-3, 1.7, scale=2.0, mean_lo=0.0, mean_hi=1.0)
    assert cs3.excluded_below[j]


def test_draw_probabilities_stay_exact_after_many_updates():
    """Stale Fenwick totals gave prob 1.0000000000000016 and max_weight 0.9999999999999984 at the last draw."""
    rng = np.random.default_rng(0)
    for _ in range(5):
        n = 157
        s = WithoutReplacementSampler(n, rng.random(n) + 0.05, uniform_floor=0.5)
        for t in range(n):
            if t in (20, 40, 90):  # refits replace the scores mid-run
                s.set_scores(rng.random(n) * 3 + 0.01)
            d = s.draw(rng)
            assert 0.0 < d.prob <= 1.0 and d.max_weight >= 1.0
            assert d.max_weight >= 1.0 / (d.remaining * d.prob) - 1e-12
        assert d.remaining == 1 and d.prob == 1.0 and d.max_weight == 1.0


@pytest.mark.parametrize("method", ["ppi", "active"])
@pytest.mark.parametrize("judge_noise", [None, 0.2])
def test_false_decisions_at_most_alpha_batched_shuffled_exhausting(method, judge_noise):
    """theta = 1/2 exactly, alpha = 0.2, labels asked 8 at a time and answered shuffled, most runs exhaust the
    pool. Tolerance: 2.5 binomial standard deviations (0.2 + 0.058 at 300 runs, so 0.27 fails)."""
    runs, wrong, exhausted = 300, 0, 0
    for r in range(runs):
        y, votes = _symmetric_pool(10, seed=r, judge_noise=judge_noise)
        rng = np.random.default_rng([1, r])
        # a closed pool: the CS runs at the full alpha (none kept for growth), the harder case to keep valid
        cmp = Comparison(votes, config=ComparisonConfig(method=method, alpha=0.2, grid_resolution=20,
                                                        pool_growth_alpha_share=0.0), rng=rng)
        _drive_batched(cmp, y, rng)
        wrong += cmp.decision.value in ("better", "worse")
        exhausted += cmp.processed == y.size
    assert exhausted > runs / 2  # the runs do reach the pool's end, where the rounding bug lived
    assert wrong / runs <= 0.2 + 2.5 * math.sqrt(0.2 * 0.8 / runs)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["classical", "ppi", "active"])
def test_false_decisions_at_most_alpha_batched_shuffled_exhausting_many_runs(method):
    runs, wrong = 3000, 0
    for r in range(runs):
        y, votes = _symmetric_pool(12, seed=10_000 + r, judge_noise=None if r % 2 else 0.2)
        rng = np.random.default_rng([2, r])
        cmp = Comparison(votes, config=ComparisonConfig(method=method, alpha=0.2, grid_resolution=20,
                                                        pool_growth_alpha_share=0.0), rng=rng)
        _drive_batched(cmp, y, rng, batch=int(rng.integers(1, 12)))
        wrong += cmp.decision.value in ("better", "worse")
    assert wrong / runs <= 0.2 + 2 * math.sqrt(0.2 * 0.8 / runs)


# ---------------------------------------------------------------------------------- 2. budget, out of order
def test_budget_decision_does_not_depend_on_the_order_labels_arrive():
    rng = np.random.default_rng(3)
    y = rng.choice([0.0, 1.0], size=300, p=[0.1, 0.9])  # a clear winner
    outcomes = []
    for order in (1, -1):
        cmp = Comparison(None, n_items=300, config=ComparisonConfig(method="classical", budget=25),
                         rng=np.random.default_rng(4))
        items = cmp.next_items(25)
        assert len(items) == 25
        for i in items[::order]:
            cmp.record_label(i, float(y[i]))
        outcomes.append((cmp.decision, cmp.processed, cmp.status().lower))
    assert outcomes[0] == outcomes[1]
    assert outcomes[0][0].value == "better"


# ------------------------------------------------------------------------------------ 3. refit schedule
def test_calibration_refits_every_tenth_growth_for_ever():
    refits = [n for n in range(1, 20_001) if _refit_due(n, 20)]
    assert refits[0] == 20
    gaps = np.diff(refits) / np.asarray(refits[:-1])
    assert refits[-1] > 20_000 / 1.11 and gaps.max() <= 0.5
    assert np.all(gaps[np.asarray(refits[:-1]) > 200] <= 0.11)
    assert len(refits) < 150  # still O(log n) refits, each O(N)


# --------------------------------------------------------------------------------------- 4. pool versions
def test_pool_versions_spend_at_most_alpha_in_total():
    y = np.array([1.0] * 45 + [0.0] * 5)
    cmp = Comparison(None, n_items=50, config=ComparisonConfig(method="classical", alpha=0.05),
                     rng=np.random.default_rng(5))
    spent = [cmp.alpha]
    _drive_batched(cmp, y, np.random.default_rng(6))
    assert cmp.decision.value == "better"  # decided; adding pairs now reopens it ...
    for version in range(1, 30):
        cmp.add_items(np.empty((5, 0)))
        assert cmp.pool_version == version and cmp.decision.value == "running"
        spent.append(cmp.alpha)
        cmp.next_items(1)  # a draw, so that the next addition opens a new version
    assert sum(spent) <= 0.05 + 1e-15  # ... and every verdict it can give is paid from the same alpha
    assert spent[0] == pytest.approx(0.95 * 0.05)
    assert all(b == pytest.approx(a / 2) for a, b in zip(spent[1:], spent[2:], strict=False))


def test_a_closed_pool_runs_at_the_full_alpha_and_refuses_growth():
    closed = ComparisonConfig(method="classical", alpha=0.05, pool_growth_alpha_share=0.0)
    cmp = Comparison(None, n_items=50, config=closed, rng=np.random.default_rng(5))
    assert cmp.alpha == 0.05 and cmp.cs.alpha == 0.05 and cmp.status().alpha == 0.05
    cmp.add_items(np.empty((5, 0)))  # before any draw the pool may still grow: nothing has been spent
    assert cmp.n_items == 55 and cmp.pool_version == 0
    cmp.next_items(1)
    with pytest.raises(ValueError, match="closed"):
        cmp.add_items(np.empty((5, 0)))
    assert cmp.n_items == 55 and cmp.pool_version == 0
    with pytest.raises(ValueError, match="pool_growth_alpha_share"):
        ComparisonConfig(pool_growth_alpha_share=-0.1)
    # the service's default stays growable
    assert ComparisonConfig().pool_growth_alpha_share > 0


def test_replay_runs_closed_pools_at_the_full_alpha():
    from tiebreak.sampler.replay import ReplayPool, replay, replay_once
    pool = ReplayPool(tuple(np.array([v]) for v in [1.0] * 40 + [0.0] * 10), np.empty((50, 0)))
    full = replay(pool, ComparisonConfig(method="classical", alpha=0.05), runs=1, seed=0)
    # the same run in a growable comparison keeps 5 % of alpha back: same draws, a wider interval
    growable = replay_once(pool, ComparisonConfig(method="classical", alpha=0.05), np.random.default_rng(
        np.random.SeedSequence(0).spawn(1)[0]))
    assert full.outcomes[0].decision == growable.decision == "better"
    assert full.outcomes[0].labels <= growable.labels
    assert full.outcomes[0].lower > growable.lower and full.outcomes[0].upper <= growable.upper


# ---------------------------------------------------------------------------------------- 5. exact reload
@pytest.mark.parametrize("method", ["ppi", "active"])
def test_reload_resumes_identically_for_many_seeds(method):
    differ = 0
    for seed in range(60):
        rng = np.random.default_rng(seed)
        n = 120
        y = rng.choice([0.0, 0.5, 1.0], size=n, p=[0.4, 0.2, 0.4])
        votes = np.clip(0.5 + 0.5 * (y[:, None] - 0.5) + rng.normal(0, 0.25, (n, 2)), 0, 1)
        a = Comparison(votes, config=ComparisonConfig(method=method, alpha=0.01), rng=np.random.default_rng(seed))
        stop = int(rng.integers(25, 90))
        while a.processed < stop and not a.decision.final:
            for i in a.next_items(3):
                a.record_label(i, float(y[i]))
        b = Comparison.from_json(a.to_json(include_votes=False), votes)
        for cmp in (a, b):
            for _ in range(15):
                for i in cmp.next_items(2):
                    cmp.record_label(i, float(y[i]))
        differ += ([d.item for d in a.draws] != [d.item for d in b.draws]) or a.status() != b.status()
    assert differ == 0


# ------------------------------------------------------------------------------------- 6. predictable fit
def test_calibration_uses_exactly_the_labels_processed_before():
    rng = np.random.default_rng(7)
    n = 200
    y = rng.choice([0.0, 0.5, 1.0], size=n)
    votes = np.clip(0.5 + 0.6 * (y[:, None] - 0.5) + rng.normal(0, 0.2, (n, 2)), 0, 1)
    cmp = Comparison(votes, config=ComparisonConfig(method="active", alpha=0.001), rng=np.random.default_rng(8))
    for i in range(0, n, 3):  # labels known early (an annotation tool), for pairs not drawn yet
        cmp.offer_label(i, float(y[i]))
    checked = 0
    while cmp.processed < 120:
        items = cmp.next_items(8)
        rng.shuffle(items)
        for i in items:
            cmp.record_label(i, float(y[i]))
            done = [d.item for d in cmp.draws[: cmp.processed]]
            if cmp.calibration.n_labels and cmp.calibration.n_labels == len(done):
                expect = fit_calibration(cmp.features[done], y[done], cmp.config.calibration_penalty)
                assert cmp.calibration == expect
                checked += 1
    assert checked >= 5


# -------------------------------------------------------------------------------------------- 7. noise bound
@pytest.mark.parametrize("t, alpha, rho", [(10, 0.05, 25.0), (400, 0.01, 60.0), (5000, 0.2, 10.0)])
def test_noise_bound_is_the_two_sided_normal_mixture_boundary(t, alpha, rho):
    """The Gaussian mixture over lambda in R is already two-sided: at |S| = B_t the mixture martingale
    sqrt(rho / (V + rho)) exp(S^2 / (2 (V + rho))) (V = t/4) equals 1/alpha exactly, so by Ville
    P(exists t: |S_t| >= B_t) <= alpha without a further factor 2."""
    b = noise_bound(t, alpha, rho)
    v = t / 4.0
    mixture = math.sqrt(rho / (v + rho)) * math.exp(b * b / (2 * (v + rho)))
    assert mixture == pytest.approx(1 / alpha, rel=1e-9)


# --------------------------------------------------------------------------------------- 8. bookkeeping
def test_engine_bookkeeping_matches_brute_force_at_every_draw():
    """The running sums the engine keeps (remaining g, remaining count, draw probabilities) equal their
    definitions recomputed from scratch, so the observation it feeds the CS is the unbiased one."""
    y, votes = _symmetric_pool(45, seed=9, judge_noise=0.2)  # theta = 1/2: the run goes to the pool's end
    n = y.size
    cmp = Comparison(votes, config=ComparisonConfig(method="active", alpha=1e-6), rng=np.random.default_rng(10))
    while cmp.processed < n:
        processed_items = {d.item for d in cmp.draws[: cmp.processed]}
        alive = np.array([i not in {d.item for d in cmp.draws} for i in range(n)])
        not_processed = np.array([i not in processed_items for i in range(n)])
        assert cmp.g_remaining_sum == pytest.approx(cmp.g[not_processed].sum(), abs=1e-9)
        (item,) = cmp.next_items(1)
        d = cmp.draws[-1]
        assert d.remaining == alive.sum()
        q = np.full(n, 1.0 / alive.sum()) * alive
        if cmp.gamma < 1 and cmp.calibration.n_labels > 0:
            s = cmp.sampler.scores_in_use() * alive
            q = cmp.gamma * alive / alive.sum() + (1 - cmp.gamma) * s / s.sum()
        assert d.prob == pytest.approx(q[item], rel=1e-12)
        assert np.sum(q) == pytest.approx(1.0)
        assert d.max_weight >= (1.0 / (alive.sum() * q[alive])).max() - 1e-12
        cmp.record_label(item, float(y[item]))
    assert cmp.decision.value == "undecided" and cmp.calibration.n_labels > 0


@pytest.mark.parametrize("prior_kind, prior_penalty", [("right", 20.0), ("misleading", 20.0), ("misleading", 1000.0)])
def test_false_decisions_at_most_alpha_with_a_carried_prior_batched_shuffled_exhausting(prior_kind, prior_penalty):
    """A carried prior scales the bets by its own predicted variance ratio from the first draw (capped at 4).
    Whether that prior is right (learnt where the judge agrees with the labels) or misleading (learnt where it
    disagrees: g is then anti-correlated with Y and the bets still grow 4x), the CS keeps its level: theta = 1/2
    exactly, alpha = 0.2, labels asked in batches of random size and answered shuffled, most runs exhaust the
    pool, ppi and active alternating. 1,000 runs; tolerance 2.5 binomial standard deviations (0.2 + 0.032).
    prior_penalty 1000 is the most a prior estimated from earlier comparisons can carry
    (calibration.between_comparison_penalty): the run then keeps the misleading slopes for good."""
    from dataclasses import replace

    from tiebreak.sampler.calibration import fit_calibration, judge_features
    rng0 = np.random.default_rng(99)
    y0 = rng0.choice([0.0, 0.5, 1.0], size=3000)
    v0 = y0 if prior_kind == "right" else 1.0 - y0
    prior = fit_calibration(judge_features(v0[:, None].repeat(2, axis=1)), y0, penalty=20.0)
    prior = replace(prior, prior_penalty=prior_penalty)
    assert prior.variance_ratio > 4  # both fit their own training labels well: the prior claims a 4x saving
    runs, wrong, exhausted = 1000, 0, 0
    for r in range(runs):
        y, votes = _symmetric_pool(10, seed=20_000 + r, judge_noise=0.2)
        rng = np.random.default_rng([3, r])
        cmp = Comparison(votes, config=ComparisonConfig(method=("ppi", "active")[r % 2], alpha=0.2,
                                                        grid_resolution=20, pool_growth_alpha_share=0.0),
                         rng=rng, prior=prior)
        assert cmp._bet_variance_factor() == 4.0
        _drive_batched(cmp, y, rng, batch=int(rng.integers(1, 9)))
        wrong += cmp.decision.value in ("better", "worse")
        exhausted += cmp.processed == y.size
    assert exhausted > runs / 4
    assert wrong / runs <= 0.2 + 2.5 * math.sqrt(0.2 * 0.8 / runs)
