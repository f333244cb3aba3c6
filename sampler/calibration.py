"""Judge calibration learnt online from the human labels seen so far (predictable, so validity holds).

Model: ridge regression of the human verdict Y in {0, 1/2, 1} on judge features
    x_i = [f_i1, ..., f_iJ, miss_i1, ..., miss_iJ]     (f = P(tuned better), NaN -> 1/2 and miss = 1)
with an unpenalised intercept:  beta = argmin sum (y - b0 - x beta)^2 + penalty * |beta|^2.
The prediction g(x) = clip(b0 + x beta, 0, 1) is the "prediction" in prediction-powered inference. The ridge
penalty acts as PPI++ power tuning (Angelopoulos, Duchi & Zrnic 2023, "PPI++"): with few labels or
uninformative judges beta shrinks to 0 and g to the label mean, so the judges cannot add variance they do not
pay for.

The penalty is chosen from the labels themselves (penalty=None, the default): the value on a geometric grid,
plus "infinite" (g = the label mean, i.e. no judge at all), and the centre of the shrinkage -- 0 (no judge) or
the judges' own votes ("the judge is calibrated as it is", a one-number fit of bias and the votes' mean) --
that minimise the exact leave-one-out squared error of the ridge fit; then how much of that fit to use, a
weight w in [0, 1] (g = ybar + w (fit - ybar)): the PPI++ power-tuning coefficient estimated on leave-one-out
predictions, shrunk by an empirical-Bayes (positive-part James-Stein) factor for its noise (select_fit). For a
linear smoother y_hat = H y the leave-one-out residual is (y_i - y_hat_i) / (1 - H_ii)
(Allen 1974, "The relationship between variable selection and data augmentation and a method for prediction",
Technometrics; Golub, Heath & Wahba 1979), and for ridge with an unpenalised intercept
H = 11'/n + X_c (X_c'X_c + penalty I)^-1 X_c', whose diagonal the SVD X_c = U S V' gives for every penalty at
once: H_ii = 1/n + sum_k U_ik^2 s_k^2 / (s_k^2 + penalty). So a judge that predicts the labels is trusted after
a handful of labels, one that does not gets (almost always) weight 0, and one in between gets part of its fit. Predictability is
untouched: the choice uses only the labels the fit uses (those processed before the next draw).
Faster start (issue 9): for the prediction g the candidate fits are few -- "no judge", the judges' mean vote
taken as it is (slope 1, fitted offset), and one moderate ridge step (penalty 16, MEAN_FIT_PENALTIES) from
either -- and the empirical-Bayes weight uses kappa = 1, fitted from 3 labels on (shrunk_ridge_fit has the
figures).
A second ridge fit on the squared residuals gives v(x) ~ E[(Y - g(x))^2 | x], the per-pair residual
spread that the active sampling policy uses (only its predictability matters for validity, not its accuracy).

Closed form (normal equations) in numpy rather than scikit-learn's Ridge: it is refit many times per replay run
and scikit-learn's input validation costs more than the solve; tests check it against sklearn.linear_model.Ridge.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def judge_features(judge_votes: np.ndarray) -> np.ndarray:
    """(N, J) votes in [0,1] with NaN for missing -> (N, 2J) features [votes (NaN->1/2), missing indicators]."""
    votes = np.asarray(judge_votes, dtype=float)
    if votes.ndim != 2:
        raise ValueError("judge_votes must be a 2-D array (pairs x judges)")
    missing = np.isnan(votes)
    return np.hstack([np.where(missing, 0.5, votes), missing.astype(float)])


PRIOR_PENALTY = 20.0  # ridge penalty on the deviation from a carried prior calibration (when not estimated)
PRIOR_PENALTY_RANGE = (1.0, 1000.0)  # an estimated penalty is clipped here (1000: the prior's slopes are kept)
PRIOR_MIN_COMPARISONS = 5  # the penalty is estimated from the spread between >= this many earlier comparisons
PRIOR_VARIANCE_LABELS = 20.0  # a prior's variance estimates count as this many labels of the current pool
EB_NOISE = 1.0  # kappa in the weight (1 - kappa s^2 / C^2)+ of select_fit (1: plain empirical Bayes)
PENALTY_GRID: tuple[float, ...] = tuple(float(2.0**k) for k in range(-2, 13))  # 0.25 .. 4096, then infinity
# The ridge penalties of the candidate fits of the *mean* (the prediction g), besides infinity: the judges' mean
# vote as it is, or one moderate ridge step from it or from 0 -- see shrunk_ridge_fit. The spread model v(x)
# keeps PENALTY_GRID.
MEAN_FIT_PENALTIES: tuple[float, ...] = (16.0,)


@dataclass(frozen=True)
class CentredSvd:
    """The thin SVD X_c = U S V' of the column-centred features, kept so that every leave-one-out fit on the
    same features (both bases of select_fit, the mean and the spread model of fit_calibration) shares one
    decomposition: only the targets differ. Directions with s_k <= 1e-12 max(1, s_max) are dropped."""

    u: np.ndarray
    sv: np.ndarray

    @staticmethod
    def of(x: np.ndarray) -> CentredSvd:
        u, sv, _ = np.linalg.svd(x - x.mean(axis=0), full_matrices=False)
        keep = sv > 1e-12 * max(1.0, float(sv.max(initial=0.0)))
        return CentredSvd(u[:, keep], sv[keep])

    def shrinkage(self, grid: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
        """For each penalty: the factors s_k^2 / (s_k^2 + penalty) (penalties x k) and the hat diagonal
        H_ii = 1/n + sum_k U_ik^2 s_k^2 / (s_k^2 + penalty) (penalties x n)."""
        pens = np.asarray(grid, dtype=float)
        shrink = self.sv[None, :] ** 2 / (self.sv[None, :] ** 2 + pens[:, None])
        hat = 1.0 / self.u.shape[0] + (shrink[:, None, :] * (self.u**2)[None, :, :]).sum(axis=2)
        return shrink, hat

    def loo_residuals(self, y: np.ndarray, shrink: np.ndarray, hat: np.ndarray) -> np.ndarray:
        """loo_residuals for the penalties behind (shrink, hat) = self.shrinkage(grid)."""
        n = y.size
        yc = y - y.mean()
        fitted = (shrink * (self.u.T @ yc)[None, :]) @ self.u.T          # (penalties, n), centred
        return np.vstack([(yc[None, :] - fitted) / (1.0 - hat), yc / (1.0 - 1.0 / n)])


def loo_residuals(x: np.ndarray, y: np.ndarray, grid: tuple[float, ...] = PENALTY_GRID,
                  svd: CentredSvd | None = None) -> np.ndarray:
    """Exact leave-one-out residuals y_i - yhat_(-i) of ridge (unpenalised intercept) for every penalty in
    ``grid`` and, as the last row, for penalty = infinity (the mean of y): shape (len(grid) + 1, n). n >= 3.
    ``svd``: CentredSvd.of(x) when the caller already has it."""
    svd = svd if svd is not None else CentredSvd.of(x)
    return svd.loo_residuals(np.asarray(y, dtype=float), *svd.shrinkage(grid))


def loo_squared_errors(x: np.ndarray, y: np.ndarray, grid: tuple[float, ...] = PENALTY_GRID) -> np.ndarray:
    """Squares of loo_residuals."""
    return loo_residuals(x, y, grid) ** 2


def select_fit(x: np.ndarray, y: np.ndarray, bases: list[np.ndarray],
               grid: tuple[float, ...] = PENALTY_GRID,
               svd: CentredSvd | None = None) -> tuple[int, float, float, float]:
    """Choose (base, penalty, weight) for g = ybar + w (b0 + x (base + delta) - ybar), delta the ridge fit of
    y - x base: a continuous (empirical-Bayes) amount of trust in the judges instead of an all-or-nothing rule.

    1. Fit: among every base with every penalty in ``grid`` (and penalty infinity, delta = 0), the one of least
       exact leave-one-out squared error.
    2. Weight, by power tuning out of sample (the PPI++ lambda, Angelopoulos, Duchi & Zrnic 2023, with the
       covariances taken on leave-one-out predictions so that the fit's own overfitting is not rewarded):
       with r_i = y_i - ybar_(-i) and d_i = yhat_(-i) - ybar_(-i) (the fit's leave-one-out departure from the
       leave-one-out mean), the LOO error of ybar + w d is V - 2 w C + w^2 D, C = mean(r d), D = mean(d^2),
       least at w = C / D: the least-squares slope of r on d through the origin. Its noise is that of a
       regression slope given the d's, Var(w_hat | d) = sigma^2 / (n D) with sigma^2 = sum (r - w_hat d)^2 /
       (n - 1), i.e. C_hat has standard error s, s^2 = sigma^2 D / n, and C_hat / s is the slope's ordinary
       t-statistic (tests cross-check it against statsmodels' OLS). Treating C_hat ~ N(C, s^2) with
       C ~ N(0, tau^2), tau^2 estimated by (C_hat^2 - s^2)+, the posterior mean of C is C_hat (1 - s^2 /
       C_hat^2)+ (positive-part James-Stein / empirical Bayes; Efron & Morris 1973), so
           C_post = C_hat (1 - kappa s^2 / C_hat^2)+,   w = min(1, C_post / D),   kappa = EB_NOISE = 1.
       kappa = 1 is that posterior mean. (With 2 x 16 candidates, C_hat was taken for the best of them on the
       same residuals, optimistic, and kappa = 2 was needed: shuffled-judge PandaLM pools worst 1.040x classical
       with kappa = 1, 1.025x with kappa = 2. The mean's fit now has one candidate with a judge, so kappa = 1;
       the spread model still selects among the grid, where only predictability matters.) A useless judge has
       t ~ N(0, 1): w = 0 unless |t| > 1, and small then; a judge whose slope is k standard errors gets
       (1 - 1/k^2) of its fitted weight. (Before, s was taken as
       sd(r d) / sqrt(n), the unconditional spread of the products; for a judge explaining a share R2 of the
       variance that is larger by about sqrt((1 + R2) / (1 - R2)), so a good judge was trusted later; Arena
       ppi 2,858 -> 2,842 labels with the conditional one, same seeds, both with the new bet scaling.)
    3. The predicted variance ratio of labels to residuals, V / (V - 2 w C_post + w^2 D) with V = mean(r^2):
       the leave-one-out error of the label mean over the posterior-expected leave-one-out error of the
       weighted fit (C replaced by its empirical-Bayes posterior mean, so that the noise in C_hat does not
       inflate the predicted gain: for w = C_post / D < 1 it is 1 / (1 - C_post^2 / (D V))). It is exactly 1
       when w = 0 and grows only as the judges earn trust. The confidence sequence scales its bets by it
       (variance-adaptive bets, sampler.engine).
    Returns (index of the base, penalty, w, variance ratio); w = 0 means g = the label mean (bases[0] with
    penalty infinity: the reference) and ratio 1. Needs only the labels given (the caller passes past labels
    only), so it is predictable. ``svd``: CentredSvd.of(x) when the caller already has it (one decomposition
    serves every base and penalty).
    """
    n = y.size
    inf = float("inf")
    if n < 3:
        return 0, inf, 0.0, 1.0
    pens = np.asarray(list(grid) + [inf])
    svd = svd if svd is not None else CentredSvd.of(x)
    shrink, hat = svd.shrinkage(grid)
    res = [svd.loo_residuals(y - x @ b, shrink, hat) for b in bases]
    ref = res[0][-1]
    stacked = np.stack(res)                                      # (bases, penalties, n)
    mse = np.einsum("bpn,bpn->bp", stacked, stacked) / n        # (bases, penalties); dot products, not np.mean
    k, j = np.unravel_index(int(np.argmin(mse)), mse.shape)      # (cheaper: select_fit runs after every label)
    d = ref - res[k][j]
    c_hat = float(ref @ d) / n
    d2 = float(d @ d) / n
    if c_hat <= 0.0 or d2 <= 1e-15 * max(float(ref @ ref) / n, 1e-300):
        return 0, inf, 0.0, 1.0
    w_hat = c_hat / d2
    # the regression of r on d through the origin: Var(w_hat | d) = sigma^2 / (n D), sigma^2 the residual
    # variance, so t^2 = w_hat^2 n D / sigma^2; s^2 = sigma^2 D / n is the matching variance of C_hat
    s2 = float(np.sum((ref - w_hat * d) ** 2)) / (n - 1) * d2 / n
    c_post = c_hat * max(0.0, 1.0 - EB_NOISE * s2 / c_hat**2)
    w = min(1.0, c_post / d2)
    if w <= 0.0:
        return 0, inf, 0.0, 1.0
    v = float(ref @ ref) / n
    ratio = v / max(v - 2.0 * w * c_post + w * w * d2, 1e-12 * v)
    return int(k), float(pens[j]), w, ratio


def shrunk_ridge_fit(x: np.ndarray, y: np.ndarray, grid: tuple[float, ...] = PENALTY_GRID,
                     svd: CentredSvd | None = None) -> tuple[float, np.ndarray, float]:
    """Intercept and coefficients of ybar + w (b0 + x (base + delta) - ybar), with (base, penalty, w) chosen by
    select_fit among the bases 0 (no judge) and identity_coef (the judges' votes as they are), the penalties
    ``grid`` (and infinity), and select_fit's out-of-sample variance ratio (labels over residuals).

    For the mean, fit_calibration passes grid = MEAN_FIT_PENALTIES = (16,): three fits with a judge, the
    identity base with penalty infinity, b0 + vbar_i (vbar the judges' mean vote, b0 = mean(y - vbar)), i.e.
        g_i = ybar + w (vbar_i - mean of vbar over the labelled pairs),   w in [0, 1] from select_fit,
    "the judge's vote means what it says" (slope 1) shrunk towards "no signal" (slope 0) by the empirical-Bayes
    weight, and one ridge step of penalty 16 from it or from 0 (so that a judge worse than the others, e.g.
    Arena's position-biased GPT-3.5, can be down-weighted); kappa = 1, the plain posterior mean, since 3
    candidates select far less than 32. Measured against the previous choice (2 bases x 16 penalties,
    kappa = 2, first fit at 5 labels) on the PandaLM fixed-theta pools, 100 replays each (docs/statistics.md,
    "Faster start"): ppi / classical 0.710, 0.746, 0.719, 0.726 -> 0.698, 0.686, 0.704, 0.670 with the first
    fit at 3 labels; useless (shuffled) judge worst 1.023 -> 1.012; Arena ppi 2,832 -> 2,824. With the identity
    fit alone (no ridge step) PandaLM was the same (0.666-0.707) but Arena 2,845; with penalty 4 / 64 / 256
    Arena 2,833 / 2,834 / 2,841. Few free parameters fitted from a handful of labels instead of up to five
    chosen among 32 fits: the weight is trusted sooner and is not more often spurious."""
    bases = [np.zeros(x.shape[1]), identity_coef(x.shape[1])]
    k, pen, w, ratio = select_fit(x, y, bases, grid, svd)
    y_mean = float(y.mean())
    if w == 0.0:
        return y_mean, np.zeros(x.shape[1]), 1.0
    b0, delta = ridge_fit(x, y - x @ bases[k], pen)
    return (1.0 - w) * y_mean + w * b0, w * (bases[k] + delta), ratio


def identity_coef(n_features: int) -> np.ndarray:
    """Coefficients of "trust the judges as they are": g = mean of the J votes (missing indicators 0)."""
    j = n_features // 2
    return np.concatenate([np.full(j, 1.0 / j), np.zeros(n_features - j)]) if j else np.zeros(n_features)


def ridge_fit(x: np.ndarray, y: np.ndarray, penalty: float) -> tuple[float, np.ndarray]:
    """Intercept and coefficients of ridge regression with an unpenalised intercept."""
    x_mean = x.mean(axis=0)
    y_mean = float(y.mean())
    if np.isinf(penalty):
        return y_mean, np.zeros(x.shape[1])
    xc = x - x_mean
    gram = xc.T @ xc + penalty * np.eye(x.shape[1])
    beta = np.linalg.solve(gram, xc.T @ (y - y_mean))
    return y_mean - float(x_mean @ beta), beta


@dataclass(frozen=True)
class JudgeCalibration:
    """g(x) = clip(b0 + x.beta, 0, 1) and v(x) = clip(c0 + x.gamma, v_min, 1/4); fitted on n_labels labels.

    label_var and resid_var: out-of-sample (leave-one-out) estimates of Var(Y) and of E[(Y - g(x))^2] on the
    labels of the fit; their ratio is what the judges are predicted to save per label (variance_ratio)."""

    intercept: float
    coef: tuple[float, ...]
    var_intercept: float
    var_coef: tuple[float, ...]
    n_labels: int
    label_var: float = 0.25
    resid_var: float = 0.25
    prior_penalty: float = PRIOR_PENALTY  # used as a prior: the ridge penalty on a comparison's deviation from it

    @property
    def variance_ratio(self) -> float:
        """Var(Y) / E[(Y - g)^2], estimated out of sample; 1 for a constant calibration."""
        return self.label_var / self.resid_var if self.resid_var > 0 else 1.0

    def predict(self, features: np.ndarray) -> np.ndarray:
        return np.clip(self.intercept + features @ np.asarray(self.coef), 0.0, 1.0)

    def predict_spread(self, features: np.ndarray, v_min: float = 0.01) -> np.ndarray:
        return np.clip(self.var_intercept + features @ np.asarray(self.var_coef), v_min, 0.25)

    @staticmethod
    def from_dict(c: dict) -> JudgeCalibration:
        """Inverse of dataclasses.asdict; states saved before a field existed get its default."""
        return JudgeCalibration(c["intercept"], tuple(c["coef"]), c["var_intercept"], tuple(c["var_coef"]),
                                c["n_labels"], c.get("label_var", 0.25), c.get("resid_var", 0.25),
                                c.get("prior_penalty", PRIOR_PENALTY))

    @staticmethod
    def constant(value: float, n_features: int, spread: float = 0.25, n_labels: int = 0) -> JudgeCalibration:
        zeros = (0.0,) * n_features
        return JudgeCalibration(float(value), zeros, float(spread), zeros, n_labels)


def fit_calibration(features: np.ndarray, labels: np.ndarray, penalty: float | None = None,
                    prior: JudgeCalibration | None = None) -> JudgeCalibration:
    """Fit g and v on the labelled pairs only (the caller guarantees these are past labels).

    penalty=None chooses the fit and how much to trust it from these labels (select_fit: exact leave-one-out
    and an empirical-Bayes weight); a number fixes the ridge penalty (full trust in that fit).
    With a ``prior`` (a calibration learnt before this run, e.g. on other pools) the coefficients shrink
    towards the prior's instead of towards 0: beta = beta_prior + ridge fit of the prior's residuals.
    """
    labels = np.asarray(labels, dtype=float)
    n = labels.size
    if n == 0:
        return prior if prior is not None else JudgeCalibration.constant(0.5, features.shape[1])
    if prior is None and (n < 2 or np.ptp(labels) == 0):
        return JudgeCalibration.constant(float(labels.mean()), features.shape[1], n_labels=n)
    if n < 2:
        return prior  # type: ignore[return-value]
    base_coef = np.asarray(prior.coef) if prior is not None else np.zeros(features.shape[1])
    base_var = np.asarray(prior.var_coef) if prior is not None else np.zeros(features.shape[1])
    if penalty is None and prior is not None:
        # A prior learnt on thousands of labels is not re-selected from a handful: its residuals are fitted
        # with the penalty the prior carries -- estimated from how much the calibration varied between the
        # earlier comparisons (between_comparison_penalty), else PRIOR_PENALTY (measured on Arena with
        # --prior other-pairs: 2,799 labels with PRIOR_PENALTY against 2,847 with the leave-one-out choice
        # below; docs/statistics.md).
        penalty = prior.prior_penalty
    if penalty is None:
        # how much to trust the judges (none, some, all of the fit) and which fit, from these labels (select_fit)
        svd = CentredSvd.of(features) if n >= 3 else None     # shared by the mean's and the spread's fits
        b0, beta, ratio = shrunk_ridge_fit(features, labels, MEAN_FIT_PENALTIES, svd)
        label_var = _loo_label_variance(labels)
        resid_var = label_var / ratio
    else:
        b0, delta = ridge_fit(features, labels - features @ base_coef, float(penalty))
        beta = base_coef + delta
        label_var = _loo_label_variance(labels)
        resid_var = _loo_resid_variance(features, labels - features @ base_coef, float(penalty), label_var)
    if prior is not None:
        # the prior's estimates, worth PRIOR_VARIANCE_LABELS labels, pooled with this pool's out-of-sample ones
        k = PRIOR_VARIANCE_LABELS
        label_var = (k * prior.label_var + n * label_var) / (k + n)
        resid_var = (k * prior.resid_var + n * resid_var) / (k + n)
    g = np.clip(b0 + features @ beta, 0.0, 1.0)
    target_v = (labels - g) ** 2 - features @ base_var
    if penalty is None:
        c0, delta_v, _ = shrunk_ridge_fit(features, target_v, PENALTY_GRID, svd)
    else:
        c0, delta_v = ridge_fit(features, target_v, float(penalty))
    n_total = n + (prior.n_labels if prior is not None else 0)
    return JudgeCalibration(b0, tuple(beta.tolist()), c0, tuple((base_var + delta_v).tolist()), n_total,
                            label_var, resid_var)


def _loo_label_variance(y: np.ndarray) -> float:
    """Leave-one-out mean squared error of the label mean, mean((y - ybar)^2) (n / (n - 1))^2 -- the V of
    select_fit; 1/4 (the largest variance of a [0, 1] label) when n < 3 or the labels are all equal."""
    n = y.size
    if n < 3 or np.ptp(y) == 0:
        return 0.25
    return float(np.mean((y - y.mean()) ** 2)) * (n / (n - 1.0)) ** 2


def _loo_resid_variance(x: np.ndarray, target: np.ndarray, penalty: float, label_var: float) -> float:
    """Exact leave-one-out mean squared error of the ridge fit (fixed penalty) of ``target`` (labels minus a
    prior's prediction); label_var when n < 3."""
    if target.size < 3:
        return label_var
    return max(float(np.mean(loo_residuals(x, target, (penalty,))[0] ** 2)), 1e-12)


def prior_calibration(judge_votes: np.ndarray, labels: np.ndarray, penalty: float = PRIOR_PENALTY,
                      groups: np.ndarray | list | None = None) -> JudgeCalibration:
    """A calibration to carry into a *new* comparison as its ``prior``, learnt on other comparisons' labelled
    pairs: (n, J) judge votes in [0, 1] (NaN = missing) and the n pairs' labels in [0, 1].

    ``groups`` (one id per pair: the earlier comparison it was labelled in) matters as soon as the pairs come
    from two or more comparisons. A prediction-powered comparison needs E[Y | votes] *within* itself: a constant
    shift of g cancels in the estimator, only how Y moves with the votes inside the comparison counts. Pooled
    over comparisons, the fit also learns the *between*-comparison association -- judges and humans both prefer
    the stronger model of a pair, so the comparisons' mean votes track their theta -- and overstates both the
    slopes and the variance ratio (Chatbot Arena, all 190 model pairs: slopes 0.161 / 0.029 / 0.424 pooled,
    0.105 / 0.022 / 0.289 within; ratio 1.37 pooled, 1.12 within). So the slopes are fitted on data centred
    per comparison, the fixed-effects ("within") estimator of panel regression (by Frisch-Waugh-Lovell the
    same slopes as least squares with one intercept per comparison; Wooldridge 2010, "Econometric Analysis of
    Cross Section and Panel Data", ch. 10), and label_var / resid_var are within-comparison variances;
    the intercept only sets g's level (ybar - xbar beta over all pairs). The deviation penalty the prior carries
    (``prior_penalty``) is estimated from the spread of the comparisons' own slopes (between_comparison_penalty)
    once there are PRIOR_MIN_COMPARISONS of them; otherwise it is PRIOR_PENALTY. With one comparison (or no
    groups) this is fit_calibration with the fixed ridge penalty ``penalty`` (20: the penalty of the replay's
    ``--prior other-pairs``, whose figures docs/benchmarks.md gives).

    Validity of the new comparison needs only that the prior is fixed before its first draw -- a function of
    *other* comparisons' labels and votes, never of its own -- so every prediction g_t and bet stays
    predictable (docs/statistics.md, "Carried calibration"). The judges' columns must be in the order of the
    comparison that receives it (2 features per judge).
    """
    votes = np.asarray(judge_votes, dtype=float)
    ys = np.asarray(labels, dtype=float).reshape(-1)
    if votes.ndim != 2 or votes.shape[0] != ys.size:
        raise ValueError("judge_votes must be (n pairs x judges) with one label per pair")
    if ys.size == 0:
        raise ValueError("a prior needs at least one labelled pair")
    if np.isnan(ys).any() or ys.min() < 0.0 or ys.max() > 1.0:
        raise ValueError("labels must lie in [0, 1]")
    if not penalty > 0:
        raise ValueError("penalty must be a positive number (the ridge penalty of the prior's fit)")
    x = judge_features(votes)
    if groups is None:
        return fit_calibration(x, ys, penalty)
    ids = np.asarray(groups, dtype=object).reshape(-1)
    if ids.size != ys.size:
        raise ValueError("groups must give one comparison id per labelled pair")
    if any(g is None or (isinstance(g, float) and math.isnan(g)) for g in ids):
        raise ValueError("groups must name a comparison for every labelled pair (found None or NaN)")
    codes = np.unique(ids.astype(str), return_inverse=True)[1].reshape(-1)
    if codes.max() == 0:
        return fit_calibration(x, ys, penalty)
    return _within_comparison_fit(x, ys, codes, penalty)


def _group_centred(a: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """a minus its mean within each group (rows of a 1-D or 2-D array)."""
    k = int(codes.max()) + 1
    counts = np.bincount(codes, minlength=k).astype(float)
    if a.ndim == 1:
        return a - (np.bincount(codes, a, minlength=k) / counts)[codes]
    means = np.vstack([np.bincount(codes, a[:, j], minlength=k) for j in range(a.shape[1])]).T / counts[:, None]
    return a - means[codes]


def _within_comparison_fit(x: np.ndarray, y: np.ndarray, codes: np.ndarray, penalty: float) -> JudgeCalibration:
    """prior_calibration's fixed-effects fit: ridge slopes on per-comparison centred features and labels (their
    leave-one-out variances are the within-comparison label_var and resid_var), the overall intercept, the
    spread model on the within residuals, and the estimated deviation penalty."""
    xc, yc = _group_centred(x, codes), _group_centred(y, codes)
    within = fit_calibration(xc, yc, penalty)
    beta = np.asarray(within.coef)
    b0 = float(y.mean() - x.mean(axis=0) @ beta)
    resid = yc - xc @ beta
    c0, gamma = ridge_fit(x, resid**2, penalty)
    # centring spends one degree of freedom per comparison: both variances scale by n / (n - G) (the ratio the
    # bets use is unchanged; the level matters where they are pooled with a run's own, PRIOR_VARIANCE_LABELS)
    n, k = y.size, int(codes.max()) + 1
    dof = n / (n - k) if n > k else 1.0
    return JudgeCalibration(b0, tuple(beta.tolist()), c0, tuple(gamma.tolist()), int(n), within.label_var * dof,
                            within.resid_var * dof, between_comparison_penalty(x, y, codes))


def between_comparison_penalty(x: np.ndarray, y: np.ndarray, codes: np.ndarray,
                               min_comparisons: int = PRIOR_MIN_COMPARISONS) -> float:
    """The ridge penalty for a new comparison's deviation from the pooled calibration, sigma^2 / tau^2, with
    tau^2 the variance of the comparisons' slopes around their mean (random-coefficient regression, Swamy
    1970, Econometrica 38; ridge as the posterior mode under beta_g ~ N(beta, tau^2 I), Hoerl & Kennard 1970).

    Per comparison g with full-rank centred features on the p_g columns that vary within it and at least
    p_g + 2 labels, its least-squares slopes b_g have Var(b_gj) = tau^2 + sigma^2 [(X_g'X_g)^-1]_jj. For
    column j over the G_j comparisons that estimate it, with bbar_j their unweighted mean,
    E[G_j / (G_j - 1) sum_g (b_gj - bbar_j)^2] = sum_g Var(b_gj), so with d_gj = G_j / (G_j - 1)
    (b_gj - bbar_j)^2 - sigma^2 [(X_g'X_g)^-1]_jj (the moment estimator of DerSimonian & Laird 1986 with equal
    weights, one column at a time) tau^2 is estimated by the mean of all d_gj. sigma^2 is the residual
    variance of the comparisons' own fits (sum RSS_g / sum (n_g - 1 - p_g)), so slope differences do not
    inflate it. tau^2 is the mean of the d_gj but never less than their standard error (sd(d) / sqrt(#d)): an
    estimate within one standard error of 0 says only that tau^2 is about that small, so a handful of small
    comparisons that happen to agree do not lock a new one onto their slopes (5 comparisons of 25 binary labels
    with no true difference: median penalty 6, never the cap); the more evidence that they agree, the larger
    the penalty. Clipped to PRIOR_PENALTY_RANGE. PRIOR_PENALTY when fewer than ``min_comparisons``
    comparisons qualify or their labels do not vary within comparisons (sigma^2 = 0: the ratio is undefined).
    Chatbot Arena's 190 model pairs give 50 (189 qualify); PandaLM's 10 model pairs 15, Vicuna-80's 32 pairs 11."""
    codes = np.unique(np.asarray(codes).reshape(-1), return_inverse=True)[1].reshape(-1)
    xc, yc = _group_centred(x, codes), _group_centred(y, codes)
    slopes, noise_diag, rss, dof = [], [], 0.0, 0
    for g in range(int(codes.max()) + 1):
        rows = codes == g
        cols = np.flatnonzero(np.ptp(x[rows], axis=0) > 0)
        if cols.size == 0 or rows.sum() < cols.size + 2:
            continue
        xg = xc[np.ix_(rows, cols)]
        gram = xg.T @ xg
        if np.linalg.matrix_rank(gram) < cols.size:
            continue
        inv = np.linalg.inv(gram)
        b = inv @ (xg.T @ yc[rows])
        rss += float(np.sum((yc[rows] - xg @ b) ** 2))
        dof += int(rows.sum()) - 1 - cols.size
        slopes.append(dict(zip(cols.tolist(), b.tolist(), strict=True)))
        noise_diag.append(dict(zip(cols.tolist(), np.diag(inv).tolist(), strict=True)))
    if len(slopes) < min_comparisons or dof <= 0 or rss <= 0.0:
        return PRIOR_PENALTY
    sigma2 = rss / dof
    d: list[float] = []
    for j in sorted({j for b in slopes for j in b}):
        bj = np.array([b[j] for b in slopes if j in b])
        vj = np.array([v[j] for v in noise_diag if j in v])
        if bj.size < 2:
            continue
        d.extend((bj.size / (bj.size - 1) * (bj - bj.mean()) ** 2 - sigma2 * vj).tolist())
    if len(d) < 2:
        return PRIOR_PENALTY
    tau2 = max(float(np.mean(d)), float(np.std(d, ddof=1) / np.sqrt(len(d))))
    lo, hi = PRIOR_PENALTY_RANGE
    return hi if tau2 <= sigma2 / hi else float(min(hi, max(lo, sigma2 / tau2)))
