"""The issue-9 diagnostic (benchmarks/savings_gap.py) measures the shipped engine, and its benchmark-only
variants change only what they say they change."""

import numpy as np
import pytest

import tiebreak.sampler.calibration as calibration
import tiebreak.sampler.engine as engine
from benchmarks.savings_gap import WHAT_IFS, OracleFrom, run_labels, what_if
from tiebreak.sampler.engine import Comparison, ComparisonConfig
from tiebreak.sampler.replay import ReplayPool, prior_from_pools, replay


def _pool(n: int = 160, seed: int = 3, noisy: bool = False) -> ReplayPool:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.68).astype(float)
    judge = np.clip(0.25 + 0.5 * y + rng.normal(0, 0.2, n), 0, 1)
    votes = tuple(np.array([v, 1.0 - v]) if noisy and i % 4 == 0 else np.array([v]) for i, v in enumerate(y))
    return ReplayPool(votes, np.column_stack([judge, rng.random(n)]))


@pytest.mark.parametrize("method", ["classical", "ppi"])
@pytest.mark.parametrize("noisy", [False, True])
def test_the_diagnostic_replays_label_for_label_as_sampler_replay(method, noisy):
    pool = _pool(noisy=noisy)
    cfg = ComparisonConfig(method=method, grid_resolution=20)
    shipped = replay(pool, cfg, 12, 5).labels
    assert np.array_equal(run_labels(Comparison, pool, cfg, 12, 5), shipped)
    # an oracle that never arrives leaves the shipped engine as it is
    never = run_labels(OracleFrom, pool, cfg, 12, 5, oracle=prior_from_pools([pool]), oracle_from=10**6)
    assert np.array_equal(never, shipped)


def test_the_oracle_takes_over_exactly_at_label_k():
    pool = _pool()
    oracle = prior_from_pools([pool])
    for k in (0, 3, 7, 12):  # 12 is no refit point of the shipped schedule (10, 11, 13, ...)
        cmp = OracleFrom(pool.judge_votes, config=ComparisonConfig(method="ppi", pool_growth_alpha_share=0.0),
                         rng=np.random.default_rng(1))
        cmp.oracle, cmp.oracle_from = oracle, k
        if k == 0:
            cmp._refit()
        seen = []
        while cmp.processed < 15 and not cmp.finished:
            item = cmp.next_items(1)[0]
            seen.append(cmp.calibration is oracle)
            cmp.record_label(item, float(pool.votes[item][0]))
        assert seen == [i >= k for i in range(len(seen))], k


def test_what_ifs_change_their_constant_and_restore_the_sampler():
    shipped = (calibration.EB_NOISE, calibration.shrunk_ridge_fit, engine._refit_due)
    rng = np.random.default_rng(0)
    x = calibration.judge_features(rng.random((30, 2)))
    y = np.clip(x[:, 0] + rng.normal(0, 0.3, 30), 0, 1)
    for name in WHAT_IFS:
        with what_if(name):
            if name.startswith("kappa"):
                assert calibration.EB_NOISE == 0.5
            if name.startswith("no shrinkage"):
                b0, coef, _ = calibration.shrunk_ridge_fit(x, y, calibration.MEAN_FIT_PENALTIES)
                v = x @ calibration.identity_coef(x.shape[1])
                slope = np.polyfit(v, y, 1)[0]
                assert np.allclose(coef, slope * calibration.identity_coef(x.shape[1]))
            if name.startswith("refit"):
                assert all(engine._refit_due(n, 3) for n in range(3, 101))
            # the patched functions run where the engine calls them (a signature drift once broke a what-if)
            calibration.fit_calibration(x, y)
        assert (calibration.EB_NOISE, calibration.shrunk_ridge_fit, engine._refit_due) == shipped


def test_best_bet_growth_is_the_gaussian_rate_for_small_symmetric_bets_and_less_for_a_skewed_increment():
    from benchmarks.savings_gap import best_growth

    # +-1/2 labels with mean 0.02: G ~ mean^2 / (2 var) (second-order expansion of log(1 + lam d))
    d = np.where(np.arange(1000) < 520, 0.5, -0.5)
    assert best_growth(d, -0.5) == pytest.approx(d.mean() ** 2 / (2 * d.var()), rel=0.02)
    # at a larger effect (mean 0.1), the same mean and variance with the loss coming rarely and large (the shape
    # of a good judge's residuals): the log-optimal growth is lower although the CLT rate is the same
    d = np.where(np.arange(1000) < 600, 0.5, -0.5)
    p = 0.05
    loss = -np.sqrt(d.var() * (1 - p) / p)
    skew = np.concatenate([np.full(50, loss), np.full(950, -loss * p / (1 - p))]) + d.mean()
    assert skew.mean() == pytest.approx(d.mean()) and skew.var() == pytest.approx(d.var())
    assert best_growth(skew, float(skew.min())) < 0.85 * best_growth(d, -0.5)
