"""What a judge is worth to a run, measured online from the labels so far: the share of label variance its
calibrated votes explain, as labels saved against the labels-only test, with an interval.

Why R^2 is the value. The prediction-powered observation of a draw is Ytilde = mean_R g + (Y - g(I)) / (|R| q),
whose variance (uniform draws) is Var(Y - g(X)) = (1 - R^2) Var(Y) when g is the best linear calibration of the
votes X and R^2 is the population share of label variance it explains (Angelopoulos, Bates, Fannjiang, Jordan &
Zrnic 2023, "Prediction-powered inference", Science; PPI++ with the power-tuning coefficient, Angelopoulos,
Duchi & Zrnic 2023). The width of a confidence sequence scales as sqrt(variance / n), so reaching a given width
takes (1 - R^2) times the labels of the labels-only test: the judge saves the fraction R^2 of the labels
(equivalently, one label with the judge is worth 1 / (1 - R^2) labels without it). A run that used n labels with
the judge would have needed about n / (1 - R^2) without it, i.e. n R^2 / (1 - R^2) labels saved.

Estimates, from the m labelled pairs on which the judge voted (label y_i in {0, 1/2, 1}, vote x_i in [0, 1]):

* ``r2`` -- cross-fitted R^2: 1 - sum_i e_i^2 / sum_i f_i^2 with e_i the exact leave-one-out residual of the
  least-squares calibration y ~ 1 + x (Allen 1974; ``sampler.calibration.loo_residuals``) and f_i that of the
  label mean alone. Out of sample, so a judge without signal gets r2 <= 0 in expectation (clipped to 0: the
  service's shrunk calibration gives such a judge weight 0, so it costs labels only through the noise of that
  choice). It is what the calibration fitted on these m labels delivers, slightly below the population R^2.
* ``lower, upper`` -- a two-sided ``level`` interval for the population R^2 = rho^2 of one judge, from Fisher's
  z-transform of the Pearson correlation r: atanh(r) +- z_{(1+level)/2} / sqrt(m - 3), mapped back by tanh and
  squared (0 when the correlation interval contains 0, since a calibration may have either sign). Why this
  one: it is closed-form (cheap enough to recompute after every batch of votes), its small-sample behaviour is
  classical (Fisher 1921; accurate from m ~ 10 for near-normal data), and the simulation test
  (tests/unit/test_judge_value.py) checks its coverage on 3-valued labels at m = 30 / 100 / 300. A bootstrap
  percentile interval of the cross-fitted R^2 was the alternative; it is biased low at small m (the
  cross-fitted value estimates the R^2 of an m-label fit, not the population's), which would stop judges that
  pay later, and it costs ~1,000 refits.
* For a jury (several judges, votes possibly missing) the same interval is taken for the correlation of the
  labels with the jury's cross-fitted prediction yhat_(-i) = y_i - e_i (least squares on the votes and their
  missing indicators, ``sampler.calibration.judge_features``), with m - 3 - (p - 1) degrees of freedom for p
  features. Cross-fitted predictions correlate slightly negatively with the labels when there is no signal,
  so the jury's interval errs low: it is shown, never used to stop a judge (the stop is per judge).

Deterministic, no randomness, no I/O. The stop rule (``worthless``) is the caller's policy on these numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from tiebreak.sampler.calibration import judge_features, loo_residuals

__all__ = ["JudgeValue", "judge_value", "jury_value", "worthless"]

MIN_PAIRS = 5   # below this nothing is estimated (the interval stays [0, 1])


@dataclass(frozen=True)
class JudgeValue:
    """A judge's (or jury's) value on ``n`` labelled pairs: share of label variance explained (= share of labels
    saved) ``r2`` with a ``level`` interval [lower, upper] for the population value; ``correlation`` = the
    Pearson correlation the interval comes from (NaN when not estimable)."""

    n: int
    r2: float
    lower: float
    upper: float
    level: float
    correlation: float

    @property
    def label_factor(self) -> float:
        """Labels without the judge per label with it: 1 / (1 - R^2)."""
        return 1.0 / max(1e-12, 1.0 - self.r2)

    def labels_saved(self, labels: int) -> tuple[float, float, float]:
        """(estimate, lower, upper) of the labels a run that used ``labels`` labels saved against the
        labels-only test: labels * R^2 / (1 - R^2)."""
        def f(r2: float) -> float:
            return labels * r2 / max(1e-12, 1.0 - r2) if r2 < 1.0 else math.inf
        return f(self.r2), f(self.lower), f(self.upper)

    def to_dict(self) -> dict:
        return {"n": self.n, "r2": self.r2, "interval": [self.lower, self.upper], "level": self.level,
                "correlation": None if math.isnan(self.correlation) else self.correlation}


def _unknown(n: int, level: float) -> JudgeValue:
    return JudgeValue(n, 0.0, 0.0, 1.0, level, math.nan)


def _r2_interval(r: float, dof: float, level: float) -> tuple[float, float]:
    """Fisher-z interval of rho mapped to rho^2."""
    if dof <= 0 or math.isnan(r):
        return 0.0, 1.0
    # the standard library's normal quantile (Wichura's AS 241, ~1e-16): importing scipy.stats for it cost
    # every service process 0.7 s at start
    c = NormalDist().inv_cdf(0.5 + level / 2.0) / math.sqrt(dof)
    z = math.atanh(min(max(r, -0.999999), 0.999999))
    lo, hi = math.tanh(z - c), math.tanh(z + c)
    if lo <= 0.0 <= hi:
        return 0.0, max(lo * lo, hi * hi)
    return min(lo * lo, hi * hi), max(lo * lo, hi * hi)


def _cross_fitted_r2(x: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """(cross-fitted R^2 clipped to [0, 1], leave-one-out predictions) of least squares y ~ 1 + x."""
    with np.errstate(divide="ignore", invalid="ignore"):
        res = loo_residuals(x, y, grid=(0.0,))
    fit, ref = res[0], res[-1]
    # a pair of leverage 1 (the only one with its vote) has no leave-one-out prediction: left out
    ok = np.isfinite(fit) & np.isfinite(ref)
    den = float(ref[ok] @ ref[ok])
    r2 = 1.0 - float(fit[ok] @ fit[ok]) / den if den > 0 else 0.0
    return min(1.0, max(0.0, r2)), np.where(ok, y - fit, np.nan)


def judge_value(votes: np.ndarray, labels: np.ndarray, level: float = 0.9) -> JudgeValue:
    """One judge: ``votes`` (m,) in [0, 1], NaN = no vote (those pairs are left out); ``labels`` (m,)."""
    x = np.asarray(votes, dtype=float).reshape(-1)
    y = np.asarray(labels, dtype=float).reshape(-1)
    if x.shape != y.shape:
        raise ValueError("votes and labels must have the same length")
    keep = ~np.isnan(x)
    x, y = x[keep], y[keep]
    m = y.size
    if m < MIN_PAIRS or np.ptp(y) == 0 or np.ptp(x) == 0:
        return _unknown(m, level)
    r = float(np.corrcoef(x, y)[0, 1])
    r2, _ = _cross_fitted_r2(x[:, None], y)
    lo, hi = _r2_interval(r, m - 3, level)
    return JudgeValue(m, r2, lo, hi, level, r)


def jury_value(votes: np.ndarray, labels: np.ndarray, level: float = 0.9) -> JudgeValue:
    """All judges together: ``votes`` (m, J) with NaN for missing votes (missing indicators are features)."""
    v = np.asarray(votes, dtype=float)
    y = np.asarray(labels, dtype=float).reshape(-1)
    if v.ndim != 2 or v.shape[0] != y.size:
        raise ValueError("votes must be (pairs x judges) with one row per label")
    if v.shape[1] == 1:
        return judge_value(v[:, 0], y, level)
    any_vote = ~np.isnan(v).all(axis=1)
    v, y = v[any_vote], y[any_vote]
    m = y.size
    if m < MIN_PAIRS or np.ptp(y) == 0:
        return _unknown(m, level)
    x = judge_features(v)
    x = x[:, np.ptp(x, axis=0) > 0]
    if x.shape[1] == 0:
        return _unknown(m, level)
    r2, pred = _cross_fitted_r2(x, y)
    ok = np.isfinite(pred)
    r = float(np.corrcoef(pred[ok], y[ok])[0, 1]) if ok.sum() >= 3 and np.ptp(pred[ok]) > 0 else math.nan
    lo, hi = _r2_interval(r, m - 3 - (x.shape[1] - 1), level)
    return JudgeValue(m, r2, lo, hi, level, r)


def worthless(value: JudgeValue, threshold: float, min_pairs: int) -> bool:
    """The stop rule of ``judge_budget: auto``: on at least ``min_pairs`` labelled pairs, even the upper end of
    the interval saves less than ``threshold`` of the labels. Only an efficiency rule: whatever it decides, the
    run's confidence sequence stays valid as long as it is evaluated on past (processed) labels only."""
    return value.n >= min_pairs and value.upper < threshold
