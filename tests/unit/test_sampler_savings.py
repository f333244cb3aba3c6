"""The label-saving mechanisms of issue 9: data-chosen calibration shrinkage, predictable variance-adaptive bets,
and the predictable choice between active and uniform sampling."""

from __future__ import annotations

import numpy as np
import pytest

from tiebreak.sampler.calibration import (
    PENALTY_GRID,
    fit_calibration,
    identity_coef,
    judge_features,
    loo_squared_errors,
    ridge_fit,
    select_fit,
)
from tiebreak.sampler.engine import Comparison, ComparisonConfig
from tiebreak.sampler.replay import ReplayPool, replay


def test_leave_one_out_errors_are_exact():
    """The closed form (y_i - yhat_i) / (1 - H_ii) equals refitting without pair i, for every penalty."""
    rng = np.random.default_rng(0)
    x = judge_features(rng.choice([0.0, 0.5, 1.0, np.nan], size=(25, 2)))
    y = rng.choice([0.0, 0.5, 1.0], size=25)
    sq = loo_squared_errors(x, y, PENALTY_GRID)
    for row, pen in enumerate([*PENALTY_GRID, np.inf]):
        for i in (0, 7, 24):
            keep = np.arange(25) != i
            b0, beta = ridge_fit(x[keep], y[keep], pen)
            assert sq[row, i] == pytest.approx((y[i] - b0 - x[i] @ beta) ** 2, rel=1e-8, abs=1e-12)


def _judged(n, strength, rng):
    y = rng.choice([0.0, 0.5, 1.0], size=n, p=[0.3, 0.2, 0.5])
    votes = np.where(rng.random((n, 2)) < strength, y[:, None], rng.choice([0.0, 0.5, 1.0], size=(n, 2)))
    return judge_features(votes), y


def test_a_strong_judge_is_trusted_after_a_few_labels_and_a_useless_one_is_dropped():
    rng = np.random.default_rng(1)
    bases = [np.zeros(4), identity_coef(4)]
    # weight 0: g = the label mean, the labels-only observation
    strong = [select_fit(*_judged(20, 0.85, rng), bases)[2] for _ in range(100)]
    useless = [select_fit(*_judged(20, 0.0, rng), bases)[2] for _ in range(100)]
    assert np.mean(np.asarray(strong) > 0) >= 0.9   # the judge is used at 20 labels ...
    assert np.mean(strong) >= 0.8                   # ... with most of its fitted weight (measured 0.91)
    assert np.mean(np.asarray(useless) == 0) >= 0.7  # and a useless one mostly not (measured 0.79) ...
    assert np.mean(useless) <= 0.15                  # ... and with little weight when it is (measured 0.075)
    # the fitted calibration follows: strong -> votes carry weight; useless -> (nearly) constant
    x, y = _judged(30, 0.85, rng)
    assert sum(fit_calibration(x, y).coef[:2]) > 0.5
    x, y = _judged(30, 0.0, np.random.default_rng(3))
    assert np.ptp(fit_calibration(x, y).predict(x)) < 0.2


def test_the_judge_weight_is_the_shrunk_out_of_sample_power_tuning_coefficient():
    """w = min(1, C_post / D), C_post = C (1 - kappa / t^2)+ with t the t-statistic of the regression of r on d
    through the origin, from leave-one-out predictions computed by refitting without each pair (brute force)
    for the (base, penalty) select_fit chose; t cross-checked against statsmodels' OLS; and the variance
    ratio V / (V - 2 w C_post + w^2 D) the bets use."""
    import statsmodels.api as sm

    from tiebreak.sampler.calibration import EB_NOISE
    rng = np.random.default_rng(11)
    x, y = _judged(40, 0.5, rng)
    bases = [np.zeros(4), identity_coef(4)]
    k, pen, w, ratio = select_fit(x, y, bases)
    assert 0 < w < 1
    n = y.size
    r, d = np.empty(n), np.empty(n)
    for i in range(n):
        keep = np.arange(n) != i
        b0, delta = ridge_fit(x[keep], y[keep] - x[keep] @ bases[k], pen)
        mean_i = y[keep].mean()
        r[i] = y[i] - mean_i
        d[i] = b0 + x[i] @ (bases[k] + delta) - mean_i
    c, dd, v = np.mean(r * d), np.mean(d * d), np.mean(r * r)
    t = float(sm.OLS(r, d[:, None]).fit().tvalues[0])   # an established implementation of the OLS t
    c_post = c * max(0.0, 1 - EB_NOISE / t**2)
    assert w == pytest.approx(min(1.0, c_post / dd), rel=1e-7)
    assert ratio == pytest.approx(v / (v - 2 * w * c_post + w * w * dd), rel=1e-7)
    assert ratio > 1
    # and the calibration is the label mean moved w of the way to that fit, carrying V and V / ratio
    cal = fit_calibration(x, y)
    b0, delta = ridge_fit(x, y - x @ bases[k], pen)
    full = b0 + x @ (bases[k] + delta)
    assert np.clip(y.mean() + w * (full - y.mean()), 0, 1) == pytest.approx(cal.predict(x), abs=1e-9)
    assert cal.label_var == pytest.approx(v, rel=1e-9)
    assert cal.variance_ratio == pytest.approx(ratio, rel=1e-9)


def test_a_useless_judge_leaves_the_bets_as_labels_only_and_a_prior_sets_them_from_the_first_draw():
    rng = np.random.default_rng(21)
    x, y = _judged(30, 0.0, np.random.default_rng(3))
    assert fit_calibration(x, y).variance_ratio == 1.0          # weight 0: ratio exactly 1
    # a carried prior: its own (out-of-sample) variances are used before any label of this pool
    xs, ys = _judged(2000, 0.85, rng)
    prior = fit_calibration(xs, ys, penalty=20.0)
    assert prior.variance_ratio > 1.5
    cmp = Comparison(np.full((50, 2), 0.5), config=ComparisonConfig(method="ppi"),
                     rng=np.random.default_rng(1), prior=prior)
    assert cmp._bet_variance_factor() == pytest.approx(min(4.0, prior.variance_ratio))
    # pooled with this pool's LOO estimates as labels arrive (prior worth PRIOR_VARIANCE_LABELS labels)
    from tiebreak.sampler.calibration import PRIOR_VARIANCE_LABELS
    x2, y2 = _judged(20, 0.85, rng)
    cal = fit_calibration(x2, y2, prior=prior)
    lv = np.mean((y2 - y2.mean()) ** 2) * (20 / 19) ** 2
    k = PRIOR_VARIANCE_LABELS
    assert cal.label_var == pytest.approx((k * prior.label_var + 20 * lv) / (k + 20), rel=1e-9)


def test_active_sampling_waits_for_enough_labels_for_the_spread_model():
    """Fails with active sampling allowed from the first fit (ACTIVE_MIN_LABELS = 1)."""
    from tiebreak.sampler.engine import ACTIVE_MIN_LABELS
    rng = np.random.default_rng(12)
    n = 300
    sure = rng.random(n) < 0.6  # vote 1 always right, the other votes coin flips (as below): active pays
    y = np.where(sure, 1.0, rng.choice([0.0, 1.0], size=n))
    cmp = Comparison(sure.astype(float)[:, None], config=ComparisonConfig(method="active", alpha=1e-9),
                     rng=np.random.default_rng(13))
    used = []
    for _ in range(60):
        (i,) = cmp.next_items(1)
        cmp.record_label(i, float(y[i]))
        used.append((cmp.calibration.n_labels, cmp.active_in_use))
    assert not any(a for labels, a in used if labels < max(ACTIVE_MIN_LABELS, 20))
    assert used[-1][1]


def test_variance_adaptive_bets_are_one_for_labels_only_and_grow_with_a_good_judge():
    """The bet factor of each draw is min(the calibration's predicted variance ratio, the ratio seen so far),
    fixed before the draw's label; 1 exactly for labels only."""
    rng = np.random.default_rng(2)
    n = 400
    y = np.tile([0.0, 1.0, 0.5, 1.0], n // 4)
    votes = np.where(rng.random((n, 2)) < 0.9, y[:, None], rng.random((n, 2)))
    classical = Comparison(None, n_items=n, config=ComparisonConfig(method="classical", alpha=1e-9),
                           rng=np.random.default_rng(3))
    ppi = Comparison(votes, config=ComparisonConfig(method="ppi", alpha=1e-9), rng=np.random.default_rng(3))
    factors = []
    for cmp in (classical, ppi):
        seen = []
        for _ in range(120):
            (i,) = cmp.next_items(1)
            before = cmp._bet_variance_factor()
            m = list(cmp._moments)
            seen_ratio = (0.25 + m[2]) / (0.25 + m[4])
            expected = min(4.0, max(0.5, min(cmp.calibration.variance_ratio, seen_ratio)))
            assert before == (1.0 if cmp.config.method == "classical" else expected)
            cmp.record_label(i, float(y[i]))
            assert m[0] + 1 == cmp._moments[0]  # the factor used for a draw was fixed before its label
            seen.append(before)
        factors.append(seen)
    assert set(factors[0]) == {1.0}
    assert factors[1][0] == 1.0 and factors[1][-1] > 1.5


def test_active_sampling_only_where_it_is_predicted_to_pay():
    rng = np.random.default_rng(4)
    n = 300
    y = rng.choice([0.0, 1.0], size=n)
    useless = rng.random((n, 2))
    c = Comparison(useless, config=ComparisonConfig(method="active"), rng=np.random.default_rng(5))
    for _ in range(60):
        (i,) = c.next_items(1)
        c.record_label(i, float(y[i]))
    assert not c.active_in_use and c.sampler.max_weight() == 1.0  # uniform: the ppi design
    # a judge whose "tuned better" (vote 1) is always right and whose other votes are coin flips: the
    # residual spread differs between the two groups, so sampling the coin flips more often pays
    sure = rng.random(n) < 0.6
    votes = sure.astype(float)[:, None]
    y2 = np.where(sure, 1.0, rng.choice([0.0, 1.0], size=n))
    c2 = Comparison(votes, config=ComparisonConfig(method="active", alpha=1e-9), rng=np.random.default_rng(6))
    for _ in range(60):
        (i,) = c2.next_items(1)
        c2.record_label(i, float(y2[i]))
    assert c2.active_in_use


def test_useless_judges_cost_at_most_a_few_percent_of_labels():
    """Judge votes independent of the labels: ppi/active may not need noticeably more labels than classical
    (the guard the issue sets is 1.02x on real data; here 1.05x with 150 runs of a 300-pair pool)."""
    rng = np.random.default_rng(7)
    n = 300
    y = rng.choice([0.0, 0.5, 1.0], size=n, p=[0.3, 0.1, 0.6])
    pool = ReplayPool(tuple(np.array([v]) for v in y), rng.choice([0.0, 0.5, 1.0], size=(n, 2)))
    labels = {m: replay(pool, ComparisonConfig(method=m, grid_resolution=20), 150, seed=1).labels.mean()
              for m in ("classical", "ppi", "active")}
    assert labels["ppi"] <= 1.05 * labels["classical"]
    assert labels["active"] <= 1.05 * labels["classical"]


def test_bets_shrink_when_the_observations_turn_out_more_variable_than_the_labels():
    """A judge trusted by chance (predicted ratio > 1) whose observations have in fact been more variable than
    the labels gets smaller bets, not larger (the useless-judge guard); with a carried prior the prior's
    prediction is used as it is."""
    from tiebreak.sampler.calibration import JudgeCalibration
    rng = np.random.default_rng(31)
    n = 200
    votes = rng.random((n, 1))
    y = rng.choice([0.0, 1.0], size=n)
    spurious = JudgeCalibration(0.0, (1.0, 0.0), 0.2, (0.0, 0.0), 30, label_var=0.25, resid_var=0.15)
    cmp = Comparison(votes, config=ComparisonConfig(method="ppi"), rng=np.random.default_rng(1))
    for _ in range(30):
        (i,) = cmp.next_items(1)
        cmp.record_label(i, float(y[i]))
    cmp.calibration = spurious
    cmp._apply_calibration()
    for _ in range(40):   # g = the votes, independent of y: Ytilde varies more than Y
        (i,) = cmp.next_items(1)
        cmp.record_label(i, float(y[i]))
        cmp.calibration = spurious  # keep the spurious trust (refits would drop it)
        cmp._apply_calibration()
    assert spurious.variance_ratio > 1.6
    assert cmp._bet_variance_factor() < 1.0
    with_prior = Comparison(votes, config=ComparisonConfig(method="ppi"), rng=np.random.default_rng(1),
                            prior=spurious)
    assert with_prior._bet_variance_factor() == pytest.approx(spurious.variance_ratio)


def _calibrated(n: int, rng: np.random.Generator, informative: bool = True):
    """Two judges whose first vote is P(Y = 1) itself (a calibrated judge) and whose second is that plus noise;
    informative=False permutes the labels (the same votes, a judge that knows nothing)."""
    v = rng.uniform(0.05, 0.95, size=(n, 1))
    v = np.hstack([v, np.clip(v + rng.normal(0, 0.15, (n, 1)), 0, 1)])
    y = (rng.random(n) < v[:, 0]).astype(float)
    return judge_features(v), (y if informative else rng.permutation(y))


def test_the_prediction_is_the_judges_mean_vote_with_an_empirical_bayes_slope():
    """Faster start: the mean's candidates are the label mean, the judges' mean vote as it is and one ridge
    step (MEAN_FIT_PENALTIES = (16,)) from either, and kappa = 1. When the vote as it is wins,
    g = ybar + w (vbar - mean of vbar on the labelled pairs), vbar the judges' mean vote: equal judge
    coefficients w/2 (the earlier 2 bases x 16 penalties chose a ridge fit here, unequal coefficients); when a
    ridge step wins, g = ybar + w (that fit - ybar)."""
    from tiebreak.sampler.calibration import EB_NOISE, MEAN_FIT_PENALTIES
    assert MEAN_FIT_PENALTIES == (16.0,) and EB_NOISE == 1.0
    bases = [np.zeros(4), identity_coef(4)]
    x, y = _calibrated(25, np.random.default_rng(41))
    k, pen, w, _ = select_fit(x, y, bases, MEAN_FIT_PENALTIES)
    assert (k, pen) == (1, np.inf) and 0 < w < 1
    cal = fit_calibration(x, y)
    vbar = x[:, :2].mean(axis=1)
    assert cal.coef == pytest.approx((w / 2, w / 2, 0.0, 0.0), abs=1e-12)
    assert cal.predict(x) == pytest.approx(np.clip(y.mean() + w * (vbar - vbar.mean()), 0, 1), abs=1e-12)
    x, y = _calibrated(25, np.random.default_rng(42))
    k, pen, w, _ = select_fit(x, y, bases, MEAN_FIT_PENALTIES)
    assert (k, pen) == (1, 16.0) and w > 0
    b0, delta = ridge_fit(x, y - x @ bases[1], 16.0)
    fit = b0 + x @ (bases[1] + delta)
    assert fit_calibration(x, y).predict(x) == pytest.approx(np.clip(y.mean() + w * (fit - y.mean()), 0, 1),
                                                             abs=1e-12)


def test_a_calibrated_judge_is_trusted_within_a_dozen_labels_and_a_useless_one_is_not():
    """Mean weight at 12 labels over 400 draws of the data: a calibrated judge 0.605 (the earlier 2 x 16
    candidates with kappa = 2: 0.485, which fails the first bound), its label-permuted copy 0.16 (before 0.105;
    on the shuffled-judge PandaLM pools this costs nothing measurable, docs/statistics.md)."""
    from tiebreak.sampler.calibration import MEAN_FIT_PENALTIES
    rng = np.random.default_rng(5)
    bases = [np.zeros(4), identity_coef(4)]
    strong = [select_fit(*_calibrated(12, rng), bases, MEAN_FIT_PENALTIES)[2] for _ in range(400)]
    useless = [select_fit(*_calibrated(12, rng, informative=False), bases, MEAN_FIT_PENALTIES)[2]
               for _ in range(400)]
    assert np.mean(strong) >= 0.55
    assert np.mean(useless) <= 0.2


class _PeekingComparison(Comparison):
    """A mutant for the test below: the bet factor of a draw is chosen after seeing its label (4 when the tuned
    side won, 1/2 otherwise), so K+ is no longer a martingale under theta = 1/2."""

    def _bet_variance_factor(self) -> float:
        return 4.0 if self.labels[self.draws[self.processed].item] == 1.0 else 0.5


def _false_decision_rate_calibrated_null(runs: int, cls=Comparison) -> tuple[float, float]:
    """theta = 1/2 exactly (every pair also A/B-swapped), a calibrated judge, ppi with the default first fit at
    3 labels, alpha = 0.2, labels asked in batches of 1-11 and answered shuffled. Returns (share of runs with a
    false verdict, share of runs whose calibration gave the judge weight by the 8th label)."""
    wrong, early = 0, 0
    for r in range(runs):
        rng = np.random.default_rng([9, r])
        x, y = _calibrated(20, rng)
        votes = x[:, :2]
        y, votes = np.concatenate([y, 1 - y]), np.vstack([votes, 1 - votes])
        cmp = cls(votes, config=ComparisonConfig(method="ppi", alpha=0.2, grid_resolution=20,
                                                 pool_growth_alpha_share=0.0), rng=rng)
        trusted_by_8 = False
        while not cmp.decision.final:
            items = cmp.next_items(int(rng.integers(1, 12)))
            if not items:
                break
            rng.shuffle(items)
            for i in items:
                if cmp.decision.final:
                    break
                cmp.record_label(i, float(y[i]))
                trusted_by_8 |= cmp.processed <= 8 and any(c != 0 for c in cmp.calibration.coef)
        early += trusted_by_8
        wrong += cmp.decision.value in ("better", "worse")
    return wrong / runs, early / runs


def test_false_decisions_at_most_alpha_with_a_calibrated_judge_trusted_from_three_labels():
    """False decisions <= alpha + 2.5 binomial SDs (0.258 at 300 runs) on the calibrated-judge null, whose runs
    do trust the judge early (weight > 0 by the 8th label in most); the same check catches a mutant whose bets
    peek at the label (its false-decision rate is far above alpha)."""
    import math
    assert ComparisonConfig().min_labels_to_calibrate == 3
    rate, early = _false_decision_rate_calibrated_null(300)
    assert early > 0.5
    assert rate <= 0.2 + 2.5 * math.sqrt(0.2 * 0.8 / 300)
    mutant_rate, _ = _false_decision_rate_calibrated_null(100, _PeekingComparison)
    assert mutant_rate > 0.2 + 2.5 * math.sqrt(0.2 * 0.8 / 100)
