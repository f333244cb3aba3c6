"""Judge calibration learnt online from the human labels seen so far (predictable, so validity holds).

Model: ridge regression of the human verdict Y in {0, 1/2, 1} on judge features
    x_i = [f_i1, ..., f_iJ, miss_i1, ..., miss_iJ]     (f = P(tuned better), NaN -> 1/2 and miss = 1)
with an unpenalised intercept:  beta = argmin sum (y - b0 - x beta)^2 + penalty * |beta|^2.
The prediction g(x) = clip(b0 + x beta, 0, 1) is the "prediction" in prediction-powered inference. The ridge
penalty acts as PPI++ power tuning (Angelopoulos, Duchi & Zrnic 2023, "PPI++"): with few labels or
uninformative judges beta shrinks to 0 and g to the label mean, so the judges cannot add variance they do not
pay for. A second ridge fit on the squared residuals gives v(x) ~ E[(Y - g(x))^2 | x], the per-pair residual
spread that the active sampling policy uses (only its predictability matters for validity, not its accuracy).

Closed form (normal equations) in numpy rather than scikit-learn's Ridge: it is refit many times per replay run
and scikit-learn's input validation costs more than the solve; tests check it against sklearn.linear_model.Ridge.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def judge_features(judge_votes: np.ndarray) -> np.ndarray:
    """(N, J) votes in [0,1] with NaN for missing -> (N, 2J) features [votes (NaN->1/2), missing indicators]."""
    votes = np.asarray(judge_votes, dtype=float)
    if votes.ndim != 2:
        raise ValueError("judge_votes must be a 2-D array (pairs x judges)")
    missing = np.isnan(votes)
    return np.hstack([np.where(missing, 0.5, votes), missing.astype(float)])


def ridge_fit(x: np.ndarray, y: np.ndarray, penalty: float) -> tuple[float, np.ndarray]:
    """Intercept and coefficients of ridge regression with an unpenalised intercept."""
    x_mean = x.mean(axis=0)
    y_mean = float(y.mean())
    xc = x - x_mean
    gram = xc.T @ xc + penalty * np.eye(x.shape[1])
    beta = np.linalg.solve(gram, xc.T @ (y - y_mean))
    return y_mean - float(x_mean @ beta), beta


@dataclass(frozen=True)
class JudgeCalibration:
    """g(x) = clip(b0 + x.beta, 0, 1) and v(x) = clip(c0 + x.gamma, v_min, 1/4); fitted on n_labels labels."""

    intercept: float
    coef: tuple[float, ...]
    var_intercept: float
    var_coef: tuple[float, ...]
    n_labels: int

    def predict(self, features: np.ndarray) -> np.ndarray:
        return np.clip(self.intercept + features @ np.asarray(self.coef), 0.0, 1.0)

    def predict_spread(self, features: np.ndarray, v_min: float = 0.01) -> np.ndarray:
        return np.clip(self.var_intercept + features @ np.asarray(self.var_coef), v_min, 0.25)

    @staticmethod
    def constant(value: float, n_features: int, spread: float = 0.25, n_labels: int = 0) -> JudgeCalibration:
        zeros = (0.0,) * n_features
        return JudgeCalibration(float(value), zeros, float(spread), zeros, n_labels)


def fit_calibration(features: np.ndarray, labels: np.ndarray, penalty: float = 20.0,
                    prior: JudgeCalibration | None = None) -> JudgeCalibration:
    """Fit g and v on the labelled pairs only (the caller guarantees these are past labels).

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
    b0, delta = ridge_fit(features, labels - features @ base_coef, penalty)
    beta = base_coef + delta
    g = np.clip(b0 + features @ beta, 0.0, 1.0)
    c0, delta_v = ridge_fit(features, (labels - g) ** 2 - features @ base_var, penalty)
    n_total = n + (prior.n_labels if prior is not None else 0)
    return JudgeCalibration(b0, tuple(beta.tolist()), c0, tuple((base_var + delta_v).tolist()), n_total)
