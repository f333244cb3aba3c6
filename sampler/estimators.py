"""Fixed-sample estimators of theta, used for reporting and as a cross-check of the sequential machinery.

Prediction-powered mean (Angelopoulos, Bates, Fannjiang, Jordan & Zrnic 2023, "Prediction-powered
inference", Science) with PPI++ power tuning (Angelopoulos, Duchi & Zrnic 2023, arXiv:2311.01453):

    theta_hat(lam) = lam * mean(f_unlabelled) + mean(y - lam * f_labelled)
    lam_hat        = Cov(y, f_lab) / ((1 + n/N) Var(f_lab and f_unlab pooled)), clipped to [0, 1]
                     (minimises the CLT variance below; plug-in moments as in the reference implementation)
    Var            = lam^2 Var(f_unlab) / N + Var(y - lam f_lab) / n
    CI             = theta_hat +- z_{1 - alpha/2} sqrt(Var)

n labelled pairs, N unlabelled. lam = 0 is the classical mean of the labels, lam = 1 the original PPI.
The naive judge estimate mean(f) is biased by exactly E[f - Y] (the judges' bias); PPI removes it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class MeanEstimate:
    estimate: float
    lower: float
    upper: float
    lam: float


def ppi_power_tuning(y: np.ndarray, f_labelled: np.ndarray, f_unlabelled: np.ndarray) -> float:
    n, big_n = len(y), len(f_unlabelled)
    f_all = np.concatenate([f_labelled, f_unlabelled])
    var_f = float(np.var(f_all, ddof=1))
    if var_f == 0:
        return 0.0
    cov = float(np.mean((y - y.mean()) * (f_labelled - f_labelled.mean())))
    return float(np.clip(cov / ((1 + n / big_n) * var_f), 0.0, 1.0))


def ppi_mean(y: np.ndarray, f_labelled: np.ndarray, f_unlabelled: np.ndarray, alpha: float = 0.05,
             lam: float | None = None) -> MeanEstimate:
    """PPI++ estimate and CLT interval of E[Y]; lam=None power-tunes, lam=1 is plain PPI."""
    y, fl, fu = (np.asarray(a, dtype=float) for a in (y, f_labelled, f_unlabelled))
    if y.size < 2 or fu.size < 1 or fl.size != y.size:
        raise ValueError("need >= 2 labelled pairs with predictions and >= 1 unlabelled prediction")
    lam_used = ppi_power_tuning(y, fl, fu) if lam is None else float(lam)
    est = lam_used * fu.mean() + (y - lam_used * fl).mean()
    var = lam_used**2 * np.var(fu) / fu.size + np.var(y - lam_used * fl) / y.size
    half = stats.norm.ppf(1 - alpha / 2) * np.sqrt(var)
    return MeanEstimate(float(est), float(est - half), float(est + half), lam_used)


def naive_judge_mean(f: np.ndarray) -> float:
    """mean(f): what trusting the judges alone would report (biased by E[f - Y])."""
    return float(np.nanmean(np.asarray(f, dtype=float)))
