"""tiebreak.sampler.calibration.prior_calibration: the one fit of a carried calibration (the replay's prior_from_pools and
the service's calibration_from both call it). Its validity as a prior is tested in test_sampler_audit.py
(test_false_decisions_at_most_alpha_with_a_carried_prior_batched_shuffled_exhausting)."""

from __future__ import annotations

import numpy as np
import pytest

from tiebreak.sampler.calibration import PRIOR_PENALTY, fit_calibration, judge_features, prior_calibration
from tiebreak.sampler.replay import ReplayPool, prior_from_pools


def test_prior_from_pools_is_prior_calibration_on_the_pools_mean_votes():
    rng = np.random.default_rng(0)
    pools = []
    for n in (30, 50):
        y = rng.integers(0, 2, size=n).astype(float)
        jv = np.column_stack([np.clip(y * 0.6 + 0.2 + rng.normal(0, 0.1, n), 0, 1), rng.uniform(size=n)])
        jv[rng.uniform(size=n) < 0.1, 1] = np.nan
        pools.append(ReplayPool(tuple(np.array([v, v]) for v in y), jv))
    votes = np.vstack([p.judge_votes for p in pools])
    labels = np.concatenate([[v.mean() for v in p.votes] for p in pools])
    groups = np.repeat([0, 1], [30, 50])
    cal = prior_calibration(votes, labels, groups=groups)
    assert prior_from_pools(pools) == cal
    assert cal.n_labels == 80 and cal.coef[0] > 0.2 and cal.variance_ratio > 1.5
    # two comparisons: fewer than PRIOR_MIN_COMPARISONS, so the deviation penalty is the fixed default
    assert cal.prior_penalty == PRIOR_PENALTY
    # one comparison (or none named): the plain fit with the fixed penalty
    assert prior_calibration(votes, labels) == fit_calibration(judge_features(votes), labels, PRIOR_PENALTY)
    assert prior_calibration(votes, labels, groups=np.zeros(80)) == prior_calibration(votes, labels)


def _comparisons(k: int, n: int, slope_sd: float, seed: int, between: float = 0.0):
    """k comparisons of n pairs: one judge whose vote v moves Y by a slope that varies between comparisons
    (sd slope_sd around 0.3), and whose comparison mean vote tracks the comparison's theta by ``between``;
    residual sd 0.15 (labels clipped to [0, 1], rarely reached)."""
    rng = np.random.default_rng(seed)
    votes, labels, groups = [], [], []
    for g in range(k):
        theta = rng.uniform(0.3, 0.7)
        v = np.clip(0.5 + between * (theta - 0.5) + rng.normal(0, 0.2, n), 0, 1)
        slope = 0.3 + slope_sd * rng.normal()
        y = np.clip(theta + slope * (v - v.mean()) + rng.normal(0, 0.15, n), 0, 1)
        votes.append(v[:, None]), labels.append(y), groups.append(np.full(n, g))
    return np.vstack(votes), np.concatenate(labels), np.concatenate(groups)


def test_within_comparison_slopes_are_least_squares_with_one_intercept_per_comparison():
    """Cross-check with statsmodels: the prior's slopes (ridge penalty ~0) are the OLS slopes of Y on the votes
    with a dummy per comparison (Frisch-Waugh-Lovell), and its residual variance is that fit's."""
    import statsmodels.api as sm
    votes, labels, groups = _comparisons(6, 40, 0.05, seed=1, between=2.0)
    votes = np.column_stack([votes[:, 0], np.random.default_rng(2).uniform(size=labels.size)])
    cal = prior_calibration(votes, labels, penalty=1e-9, groups=groups)
    dummies = (groups[:, None] == np.arange(6)[None, :]).astype(float)
    ols = sm.OLS(labels, np.column_stack([votes, dummies])).fit()
    assert np.allclose(cal.coef[:2], ols.params[:2], atol=1e-6)
    assert cal.coef[2:] == (0.0, 0.0)  # no vote is missing: the indicators are constant
    assert cal.resid_var == pytest.approx(ols.ssr / labels.size, rel=0.1)  # leave-one-out vs in-sample


def test_a_pooled_fit_overstates_a_judge_that_tracks_theta_between_comparisons():
    """Judges and humans both prefer the stronger model of a pair, so across comparisons the mean vote tracks
    theta: pooled, the slope mixes that in (here the between-comparison slope is 1); within comparisons it is the 0.3 that
    moves Y inside a comparison, and the variance ratio is the within one."""
    votes, labels, groups = _comparisons(40, 60, 0.0, seed=3, between=1.0)
    pooled = prior_calibration(votes, labels, penalty=1e-6)   # ~no ridge shrinkage: the slopes themselves
    within = prior_calibration(votes, labels, penalty=1e-6, groups=groups)
    assert pooled.coef[0] > 0.4
    assert within.coef[0] == pytest.approx(0.3, abs=0.04)
    assert pooled.variance_ratio > within.variance_ratio + 0.2
    g = within.predict(judge_features(votes))
    assert abs(float(g.mean() - labels.mean())) < 1e-9  # the intercept sets the overall level


@pytest.mark.parametrize("slope_sd", [0.07, 0.1])
def test_between_comparison_penalty_estimates_noise_over_slope_variance(slope_sd):
    """Slopes drawn with sd tau around 0.3, residual sd sigma = 0.15: the penalty is sigma^2 / tau^2 (4.6 and
    2.25); the estimate from 200 comparisons of 60 pairs is within a factor 1.6 of it."""
    from tiebreak.sampler.calibration import between_comparison_penalty
    votes, labels, groups = _comparisons(200, 60, slope_sd, seed=4)
    x = judge_features(votes)
    est = between_comparison_penalty(x, labels, groups)
    target = 0.15**2 / slope_sd**2
    assert target / 1.6 < est < target * 1.6


def test_between_comparison_penalty_grows_with_the_evidence_that_comparisons_agree():
    """No true difference between comparisons: tau^2 is taken as its standard error, so the penalty grows with
    the number of comparisons (about as their square root) and a few agreeing ones never reach the cap; fewer
    than PRIOR_MIN_COMPARISONS, or labels that never vary within a comparison (sigma^2 = 0: the ratio is
    undefined), give the fixed PRIOR_PENALTY."""
    from tiebreak.sampler.calibration import PRIOR_PENALTY_RANGE, between_comparison_penalty
    pens = []
    for k in (20, 100, 400):
        votes, labels, groups = _comparisons(k, 60, 0.0, seed=5)
        pens.append(between_comparison_penalty(judge_features(votes), labels, groups))
    assert pens[0] < pens[1] < pens[2] < PRIOR_PENALTY_RANGE[1] and pens[2] > 3 * pens[0]
    votes, labels, groups = _comparisons(100, 60, 0.0, seed=5)
    x = judge_features(votes)
    few = groups < 4
    assert between_comparison_penalty(x[few], labels[few], groups[few]) == PRIOR_PENALTY
    constant = groups.astype(float) % 2   # every comparison's labels all equal
    assert between_comparison_penalty(x, constant, groups) == PRIOR_PENALTY
    cal = prior_calibration(votes, constant, groups=groups)
    assert cal.prior_penalty == PRIOR_PENALTY and cal.coef == (0.0, 0.0)


def test_between_comparison_penalty_uses_the_columns_that_vary_within_each_comparison():
    """A judge vote missing on one pair makes its missing indicator vary overall but not within the other
    comparisons; a judge absent from half of them varies within those only. Neither may switch the estimate off
    (it used to fall back to PRIOR_PENALTY): the penalty stays close to the one without missing votes."""
    from tiebreak.sampler.calibration import between_comparison_penalty
    rng = np.random.default_rng(11)
    votes, labels, groups = _comparisons(60, 60, 0.07, seed=10)
    votes = np.column_stack([votes[:, 0], np.clip(votes[:, 0] + rng.normal(0, 0.2, labels.size), 0, 1)])
    full = between_comparison_penalty(judge_features(votes), labels, groups)
    one_missing = votes.copy()
    one_missing[0, 1] = np.nan
    absent = votes.copy()
    absent[groups < 30, 1] = np.nan
    for v in (one_missing, absent):
        got = between_comparison_penalty(judge_features(v), labels, groups)
        assert got != PRIOR_PENALTY and full / 2 < got < full * 2


def test_a_run_refits_towards_its_prior_with_the_penalty_the_prior_carries():
    """prior_penalty 1000: after 30 labels that disagree with it the slopes are still the prior's; 1: the run's
    own labels take over."""
    from dataclasses import replace

    from tiebreak.sampler.calibration import fit_calibration
    votes, labels, groups = _comparisons(50, 60, 0.0, seed=6)
    prior = prior_calibration(votes, labels, groups=groups)
    rng = np.random.default_rng(7)
    v = rng.uniform(size=30)
    y = np.clip(0.5 - 0.6 * (v - 0.5) + rng.normal(0, 0.1, 30), 0, 1)   # the judge is reversed here
    x = judge_features(v[:, None])
    firm = fit_calibration(x, y, prior=replace(prior, prior_penalty=1000.0))
    loose = fit_calibration(x, y, prior=replace(prior, prior_penalty=1.0))
    assert firm.coef[0] == pytest.approx(prior.coef[0], abs=0.02)
    assert loose.coef[0] < 0.0


def test_a_calibration_round_trips_through_a_dict_and_old_states_get_the_default_penalty():
    from dataclasses import asdict

    from tiebreak.sampler.calibration import JudgeCalibration
    votes, labels, groups = _comparisons(8, 30, 0.1, seed=8)
    cal = prior_calibration(votes, labels, groups=groups)
    assert JudgeCalibration.from_dict(asdict(cal)) == cal
    old = {k: v for k, v in asdict(cal).items() if k not in ("prior_penalty", "label_var", "resid_var")}
    restored = JudgeCalibration.from_dict(old)
    assert restored.prior_penalty == PRIOR_PENALTY and restored.label_var == 0.25


@pytest.mark.parametrize("votes, labels, words", [
    (np.zeros((3, 1)), np.zeros(2), "one label per pair"),
    (np.zeros(3), np.zeros(3), "one label per pair"),
    (np.zeros((0, 1)), np.zeros(0), "at least one"),
    (np.zeros((2, 1)), np.array([0.0, 1.5]), "[0, 1]"),
    (np.zeros((2, 1)), np.array([0.0, np.nan]), "[0, 1]"),
])
def test_prior_calibration_refuses_bad_input(votes, labels, words):
    with pytest.raises(ValueError, match=words.replace("[", r"\[").replace("]", r"\]")):
        prior_calibration(votes, labels)


def test_prior_calibration_refuses_bad_groups_and_penalties_and_takes_any_ids():
    with pytest.raises(ValueError, match="one comparison id per labelled pair"):
        prior_calibration(np.zeros((3, 1)), np.zeros(3), groups=[0, 1])
    for bad in ([0, None, 1], [0.0, float("nan"), 1.0]):
        with pytest.raises(ValueError, match="None or NaN"):
            prior_calibration(np.zeros((3, 1)), np.zeros(3), groups=bad)
    with pytest.raises(ValueError, match="penalty must be a positive number"):
        prior_calibration(np.zeros((3, 1)), np.zeros(3), penalty=0.0)
    votes, labels, groups = _comparisons(6, 20, 0.05, seed=12)
    named = prior_calibration(votes, labels, groups=[f"run_{g}" for g in groups])
    assert named == prior_calibration(votes, labels, groups=groups)


def test_between_comparison_penalty_agrees_with_statsmodels_mixed_model():
    """Cross-check with an established implementation: statsmodels' linear mixed model with a random intercept
    and a random vote slope per comparison (REML). Its residual variance over its slope variance is the same
    sigma^2 / tau^2 the moment estimator gives, within a factor 1.5."""
    import warnings

    import pandas as pd
    import statsmodels.formula.api as sm

    from tiebreak.sampler.calibration import between_comparison_penalty
    votes, labels, groups = _comparisons(120, 60, 0.1, seed=9)
    df = pd.DataFrame({"y": labels, "v": votes[:, 0], "g": groups})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = sm.mixedlm("y ~ v", df, groups=df["g"], re_formula="~v").fit(reml=True)
    reference = fit.scale / float(fit.cov_re.loc["v", "v"])
    ours = between_comparison_penalty(judge_features(votes), labels, groups)
    assert reference / 1.5 < ours < reference * 1.5
