"""Unit and property tests of the pure statistics: Fenwick sampling, calibration, decisions, the PPI observation."""

from __future__ import annotations

import math

import numpy as np
import ppi_py
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from sklearn.linear_model import Ridge

from tiebreak.sampler.calibration import JudgeCalibration, fit_calibration, judge_features, ridge_fit
from tiebreak.sampler.confseq import (
    BetSchedule,
    BettingConfidenceSequence,
    asymptotic_cs_radius,
    candidate_grid,
)
from tiebreak.sampler.decision import Decision, DecisionRule, spend_alpha, split_alpha
from tiebreak.sampler.engine import Comparison, ComparisonConfig
from tiebreak.sampler.fenwick import FenwickTree
from tiebreak.sampler.policy import WithoutReplacementSampler


@given(st.lists(st.floats(0, 10, allow_nan=False), min_size=1, max_size=60))
def test_fenwick_total_and_find_match_cumsum(weights):
    w = np.array(weights)
    tree = FenwickTree(w)
    assert tree.total() == pytest.approx(w.sum())
    if w.sum() > 0:
        cum = np.cumsum(w)
        for u in np.linspace(0, w.sum() * 0.999, 13):
            i = tree.find(u)
            assert w[i] > 0
            assert cum[i] >= u - 1e-9


def test_fenwick_sampling_follows_weights_chi_square():
    w = np.array([1.0, 0.0, 3.0, 6.0, 0.0, 10.0])
    tree = FenwickTree(w)
    tree.set(0, 2.0)
    w[0] = 2.0
    rng = np.random.default_rng(3)
    counts = np.bincount([tree.sample(rng) for _ in range(20_000)], minlength=w.size)
    assert counts[1] == counts[4] == 0
    expected = 20_000 * w[w > 0] / w.sum()
    assert stats.chisquare(counts[w > 0], expected).pvalue > 1e-3


def test_sampler_probabilities_are_the_mixture_and_floor_holds():
    scores = np.array([0.1, 0.5, 0.2, 0.9, 0.3])
    s = WithoutReplacementSampler(5, scores, uniform_floor=0.4)
    total = scores.sum()
    for i in range(5):
        assert s.probability(i) == pytest.approx(0.4 / 5 + 0.6 * scores[i] / total)
        assert 5 * s.probability(i) >= 0.4 - 1e-12
    assert 1 / (5 * min(s.probability(i) for i in range(5))) <= s.max_weight() + 1e-12
    rng = np.random.default_rng(0)
    seen = [s.draw(rng).item for _ in range(5)]
    assert sorted(seen) == [0, 1, 2, 3, 4]  # without replacement
    with pytest.raises(ValueError):
        s.draw(rng)


def test_ridge_matches_scikit_learn():
    rng = np.random.default_rng(1)
    x = rng.random((80, 6))
    y = x @ rng.normal(size=6) + rng.normal(0, 0.1, 80)
    b0, beta = ridge_fit(x, y, penalty=3.0)
    ref = Ridge(alpha=3.0).fit(x, y)
    assert b0 == pytest.approx(ref.intercept_, abs=1e-9)
    np.testing.assert_allclose(beta, ref.coef_, atol=1e-9)


def test_calibration_learns_informative_judge_and_ignores_noise():
    rng = np.random.default_rng(2)
    y = rng.choice([0.0, 0.5, 1.0], size=400)
    votes = np.column_stack([np.clip(y + rng.normal(0, 0.2, 400), 0, 1), rng.random(400)])
    votes[rng.random(400) < 0.1, 1] = np.nan
    cal = fit_calibration(judge_features(votes), y, penalty=5.0)
    assert cal.coef[0] > 0.5 and abs(cal.coef[1]) < 0.1
    resid = y - cal.predict(judge_features(votes))
    assert resid.var() < 0.5 * y.var()
    # with a prior, coefficients shrink towards the prior rather than 0
    prior = JudgeCalibration(0.0, (1.0, 0.0, 0.0, 0.0), 0.05, (0.0,) * 4, 1000)
    few = fit_calibration(judge_features(votes[:5]), y[:5], penalty=1e6, prior=prior)
    assert few.coef[0] == pytest.approx(1.0, abs=1e-3)


def test_decision_rule():
    rule = DecisionRule(margin=0.05, budget=100)
    assert rule.decide(0.5, 0.7, 10) is Decision.BETTER
    assert rule.decide(0.3, 0.5, 10) is Decision.WORSE
    assert rule.decide(0.46, 0.54, 10) is Decision.EQUIVALENT
    assert rule.decide(0.40, 0.54, 10) is Decision.RUNNING
    assert rule.decide(0.40, 0.54, 100) is Decision.UNDECIDED
    assert DecisionRule().decide(0.49, 0.51, 5, exhausted=True) is Decision.UNDECIDED
    # a closed interval [1/2, 1/2] (theta known to be exactly 1/2) is no verdict; an open one would be
    assert DecisionRule().decide(0.5, 0.5, 5, exhausted=True, closed=True) is Decision.UNDECIDED
    assert rule.decide(0.45, 0.55, 10, closed=True) is Decision.RUNNING
    assert rule.decide(0.46, 0.54, 10, closed=True) is Decision.EQUIVALENT
    with pytest.raises(ValueError):
        DecisionRule(margin=0.6)


def test_alpha_spending_sums_to_alpha_and_split():
    total = sum(spend_alpha(0.05, k) for k in range(1, 200_000))
    assert total < 0.05 and total == pytest.approx(0.05, rel=1e-4)
    assert split_alpha(0.05, 4) == pytest.approx(0.0125)


def test_engine_ppi_observations_average_to_ppi_py_point_estimate():
    """The engine's prediction-powered observations, with a fixed calibration and uniform draws with
    replacement, average to PPI's point estimate mean(g over the pool) + mean(y - g) over the draws (lam = 1)
    as computed by ppi_py (Angelopoulos et al. 2023's reference implementation). (Replaces the cross-check of
    sampler/estimators.py, a fixed-sample PPI++ estimator the engine never used, now deleted.)"""
    rng = np.random.default_rng(4)
    n = 300
    y = rng.choice([0.0, 0.5, 1.0], size=n)
    votes = np.clip(y * 0.6 + rng.random(n) * 0.4, 0, 1)[:, None]
    prior = JudgeCalibration(0.1, (0.7, 0.0), 0.2, (0.0, 0.0), 1000)
    cfg = ComparisonConfig(method="ppi", design="with-replacement", confidence_sequence="asymptotic",
                           min_labels_to_calibrate=10**9, alpha=1e-9)
    cmp = Comparison(votes, config=cfg, rng=np.random.default_rng(5), prior=prior)
    for _ in range(150):  # a pair drawn again is consumed free, so there are more draws than labels
        for i in cmp.next_items(1):
            cmp.record_label(i, float(y[i]))
    assert cmp.processed == len(cmp.draws) > 150
    drawn = [d.item for d in cmp.draws]
    g = prior.predict(cmp.features)
    ours = cmp.cs.mean
    est = ppi_py.ppi_mean_pointestimate(y[drawn], g[drawn], g, lam=1.0)
    assert ours == pytest.approx(float(np.ravel(est)[0]), abs=1e-12)


def test_asymptotic_cs_is_wider_than_the_fixed_time_interval_and_shrinks():
    t = np.array([10, 100, 1000, 10_000])
    r = asymptotic_cs_radius(t, 1.0, alpha=0.05)
    assert np.all(r * np.sqrt(t) > stats.norm.ppf(0.975))  # a CS pays for uniformity over time
    assert np.all(np.diff(r) < 0)
    # formula of Waudby-Smith et al. (2024), eq. (2), written out at one point
    rho2 = (-2 * math.log(0.05) + math.log(-2 * math.log(0.05) + 1)) / 100
    expect = math.sqrt(2 * (100 * rho2 + 1) / (100**2 * rho2) * math.log(math.sqrt(100 * rho2 + 1) / 0.05))
    assert r[1] == pytest.approx(expect)


def test_betting_capital_is_the_product_formula():
    grid = candidate_grid(10, (0.5,))
    cs = BettingConfidenceSequence(0.05, grid, BetSchedule((0.5,), growth=0.0, clip=0.9))
    xs = [1.0, 0.0, 1.0, 1.0, 0.5]
    for x in xs:
        cs.update(x, grid, 0.0, 1.0)
    j = int(np.argmin(abs(grid - 0.5)))
    expect = sum(math.log1p(0.5 * (x - 0.5)) for x in xs)
    assert cs.log_k_plus[j, 0] == pytest.approx(expect)
    assert cs.log_k_minus[j, 0] == pytest.approx(sum(math.log1p(-0.5 * (x - 0.5)) for x in xs))


def _with_replacement_miscoverage(theta_values, probs, n, runs, alpha, rng):
    grid = candidate_grid(20, (0.5,))
    misses = 0
    theta = float(np.dot(theta_values, probs))
    for _ in range(runs):
        cs = BettingConfidenceSequence(alpha, grid)
        xs = rng.choice(theta_values, p=probs, size=n)
        for x in xs:
            cs.update(float(x), grid, 0.0, 1.0)
            iv = cs.interval()
            if not iv.lower < theta < iv.upper:  # the betting CS's interval is open: a bound is excluded
                misses += 1
                break
    return misses / runs


def test_betting_cs_time_uniform_coverage_with_replacement():
    rng = np.random.default_rng(5)
    # theta sits exactly on a grid point: the hardest case for a grid-based interval
    rate = _with_replacement_miscoverage(np.array([0.0, 0.5, 1.0]), np.array([0.35, 0.2, 0.45]), 300, 300, 0.1, rng)
    assert rate <= 0.1 + 3 * math.sqrt(0.1 * 0.9 / 300)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000))
def test_interval_is_nested_over_time(seed):
    rng = np.random.default_rng(seed)
    grid = candidate_grid(50, (0.5,))
    cs = BettingConfidenceSequence(0.05, grid)
    prev = (0.0, 1.0)
    shrank = False
    for x in rng.choice([0.0, 0.5, 1.0], size=60, p=[0.2, 0.3, 0.5]):
        cs.update(float(x), grid, 0.0, 1.0)
        iv = cs.interval()
        # running intersection: each bound moves one way only (checked separately, so an empty interval
        # -- lower > upper -- cannot satisfy it by accident)
        assert iv.lower >= prev[0] and iv.upper <= prev[1]
        shrank |= (iv.lower, iv.upper) != prev
        prev = (iv.lower, iv.upper)
    assert shrank and prev[1] - prev[0] < 0.5
