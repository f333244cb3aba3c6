"""Anytime-valid confidence sequences for a mean, with and without replacement.

Betting confidence sequence (Waudby-Smith & Ramdas 2024, "Estimating means of bounded random variables by
betting", JRSS-B; finite-population form: Waudby-Smith & Ramdas 2020, "Confidence sequences for sampling
without replacement", NeurIPS). Observations x_t arrive with predictable bounds lo_t <= x_t <= hi_t. For every
candidate value m of the estimand the caller supplies the *predictable null mean* c_t(m) = E[x_t | past] if
theta = m (with replacement c_t(m) = m; without replacement c_t(m) = (N m - S_{t-1}) / |R_t|, the mean of the
items not yet drawn). Two capital processes per m:

    K+_t(m) = prod_s (1 + lam+_s(m) (x_s - c_s(m)))      (bets that theta > m)
    K-_t(m) = prod_s (1 - lam-_s(m) (x_s - c_s(m)))      (bets that theta < m)

Under theta = m both are non-negative martingales (each factor has conditional mean 1 and is >= 1 - clip > 0
because lam+ <= clip / (c - lo), lam- <= clip / (hi - c)). Ville's inequality gives
P(sup_t K+_t(theta) >= 2/alpha) <= alpha/2, likewise for K-; so

    C_t = {m : K+_s(m) < 2/alpha and K-_s(m) < 2/alpha for all s <= t}

covers theta at all times simultaneously with probability >= 1 - alpha (the running intersection is built in:
an m once excluded stays excluded). Each K is a *mixture* over a fixed grid of bets lam_k (a mean of
martingales is a martingale), so it adapts to the unknown effect size at a log(#grid) cost. Without
replacement the evidence against a wrong m grows like N / |R_t| as the pool empties; the bets grow with
(N / |R_t|)^growth to harvest it. The grid and growth were chosen on the Arena replay (docs/benchmarks.md);
validity does not depend on them.

Deterministic finite-population bounds are added: if c_t(m) leaves [mean_lo, mean_hi] (the range the remaining
items' mean can take) then m is impossible and excluded.

Also: the Gaussian-mixture asymptotic confidence sequence (Waudby-Smith, Arbour, Sinha, Kennedy & Ramdas 2024,
"Time-uniform central limit theory and asymptotic confidence sequences", Ann. Statist., eq. (2)).
"""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass

import numpy as np

DEFAULT_BETS: tuple[float, ...] = (0.3, 0.6, 0.9, 1.3, 1.8)
ROUNDING_TOLERANCE = 1e-9  # relative; far above float64 drift of O(N) running sums, far below any real evidence


@dataclass(frozen=True)
class BetSchedule:
    """A mixture of constant bets; bet k at time t is lambdas[k] * (N / |R_t|)**growth, clipped for safety."""

    lambdas: tuple[float, ...] = DEFAULT_BETS
    growth: float = 1.0
    clip: float = 0.8

    def __post_init__(self) -> None:
        if not self.lambdas or any(b <= 0 for b in self.lambdas):
            raise ValueError("BetSchedule.lambdas must be a non-empty tuple of positive bets")
        if not 0 < self.clip < 1:
            raise ValueError("BetSchedule.clip must lie in (0, 1)")


def candidate_grid(resolution: int = 400, extra: tuple[float, ...] = ()) -> np.ndarray:
    """Candidate values of theta: a uniform grid on [0, 1] plus exact decision points (1/2, 1/2 +- margin)."""
    grid = np.concatenate([np.linspace(0.0, 1.0, resolution + 1), np.asarray(extra, dtype=float)])
    return np.unique(np.clip(grid, 0.0, 1.0))


@dataclass(frozen=True)
class Interval:
    """theta lies in (lower, upper) -- open: the bounds are excluded candidates (betting CS) -- or, with
    closed=True, in [lower, upper] (asymptotic CS: the bounds themselves are plausible)."""

    lower: float
    upper: float
    closed: bool = False


class BettingConfidenceSequence:
    """Mixture-of-bets betting CS on a grid of candidate means; see the module docstring for the math.

    Mutable on purpose (one update per label must stay O(grid x bets)); ``to_dict``/``from_dict`` give an
    exact JSON round-trip.
    """

    kind = "betting"

    def __init__(self, alpha: float, grid: np.ndarray, bets: BetSchedule = BetSchedule()) -> None:
        if not 0 < alpha < 1:
            raise ValueError("alpha must lie in (0, 1)")
        self.alpha = float(alpha)
        self.grid = np.asarray(grid, dtype=float)
        self.bets = bets
        k = len(bets.lambdas)
        self.log_k_plus = np.zeros((self.grid.size, k))
        self.log_k_minus = np.zeros((self.grid.size, k))
        self.excluded_below = np.zeros(self.grid.size, dtype=bool)  # theta > m established
        self.excluded_above = np.zeros(self.grid.size, dtype=bool)  # theta < m established
        self._lambdas = np.asarray(bets.lambdas, dtype=float)
        self._threshold = math.log(2.0 / self.alpha) + math.log(k)  # mixture: log(mean) >= log(2/alpha)
        # running max over time of log(mean capital) per candidate (+inf: excluded deterministically), so the
        # CS can be read at any one-sided level beta: m excluded from below iff max_log_plus[m] >= log(1/beta)
        # (sampler.family: Holm's step-down levels; Ville's inequality holds for the running max)
        self.max_log_plus = np.zeros(self.grid.size)
        self.max_log_minus = np.zeros(self.grid.size)

    def update(self, x: float, null_mean: np.ndarray, lo: float, hi: float, scale: float = 1.0,
               mean_lo: float = -np.inf, mean_hi: float = np.inf,
               null_mean_minus: np.ndarray | None = None) -> None:
        """Feed one observation.

        x: the observation; null_mean: c_t(m) for every grid point (predictable); [lo, hi]: predictable bounds
        of x; scale: bet multiplier (N/|R_t|)**growth; [mean_lo, mean_hi]: range the true c_t can take.
        When c_t(m) is only known to lie in an interval, pass its upper end as null_mean (used by K+, which
        bets on x > c) and its lower end as null_mean_minus (used by K-): each factor then has conditional
        mean <= 1, a supermartingale, and Ville's inequality still applies.
        """
        c_plus = np.asarray(null_mean, dtype=float)
        c_minus = c_plus if null_mean_minus is None else np.asarray(null_mean_minus, dtype=float)
        clip = self.bets.clip
        lam = self._lambdas * scale
        # Rounding tolerance: lo, hi and c are running float sums; at the pool's last draw c(theta) equals a
        # bound exactly in exact arithmetic, and one ulp of drift must not exclude theta.
        tol_plus = ROUNDING_TOLERANCE * (1.0 + np.abs(c_plus))
        tol_minus = ROUNDING_TOLERANCE * (1.0 + np.abs(c_minus))
        # bets capped at clip / (c - lo): every factor >= 1 - clip > 0 (denominator kept >= tol, so a c on
        # the bound up to rounding bets at most clip / tol, and x - c is then rounding-sized too)
        lam_plus = np.minimum(lam[None, :], (clip / np.maximum(c_plus - lo, tol_plus))[:, None])
        lam_minus = np.minimum(lam[None, :], (clip / np.maximum(hi - c_minus, tol_minus))[:, None])
        self.log_k_plus += np.log1p(np.maximum(lam_plus * (x - c_plus)[:, None], -clip))
        self.log_k_minus += np.log1p(np.maximum(-lam_minus * (x - c_minus)[:, None], -clip))
        lse_plus, lse_minus = _logsumexp_rows(self.log_k_plus), _logsumexp_rows(self.log_k_minus)
        sure_below = (c_plus < mean_lo - tol_plus) | (c_plus < lo - tol_plus)
        sure_above = (c_minus > mean_hi + tol_minus) | (c_minus > hi + tol_minus)
        self.excluded_below |= (lse_plus >= self._threshold) | sure_below
        self.excluded_above |= (lse_minus >= self._threshold) | sure_above
        log_k = math.log(len(self.bets.lambdas))
        self.max_log_plus = np.where(sure_below, np.inf, np.maximum(self.max_log_plus, lse_plus - log_k))
        self.max_log_minus = np.where(sure_above, np.inf, np.maximum(self.max_log_minus, lse_minus - log_k))

    def exclude_outside(self, lower: float, upper: float) -> None:
        """Deterministic knowledge (e.g. the whole pool is labelled): theta lies in [lower, upper]."""
        self.excluded_below |= self.grid < lower
        self.excluded_above |= self.grid > upper
        self.max_log_plus[self.grid < lower] = np.inf
        self.max_log_minus[self.grid > upper] = np.inf

    def one_sided_p_values(self, m: float) -> tuple[float, float]:
        """Anytime-valid p-values (p_plus, p_minus) for H+: theta <= m and H-: theta >= m.

            p_plus_t = 1 / min_{grid point m' <= m} max_{s <= t} mean_k K+_s(m'; lam_k)

        If theta = m0 <= m (m0 a grid point), p_plus_t <= 1 / max_s K+_s(m0), and Ville's inequality for the
        test martingale K+(m0) gives P(exists t: p_plus_t <= beta) <= beta. Non-increasing in t. p_plus <= beta
        is this CS's "theta > m" read at the one-sided level beta (the CS itself uses beta = alpha/2 a side).
        """
        below, above = self.grid <= m + 1e-12, self.grid >= m - 1e-12
        lp = float(self.max_log_plus[below].min()) if below.any() else np.inf
        lm = float(self.max_log_minus[above].min()) if above.any() else np.inf
        return math.exp(-lp) if lp < 745 else 0.0, math.exp(-lm) if lm < 745 else 0.0

    def interval_at(self, beta_plus: float, beta_minus: float) -> Interval:
        """The interval with the lower side read at one-sided level beta_plus and the upper at beta_minus
        (the CS's own interval is interval_at(alpha/2, alpha/2), up to its exclusions at alpha)."""
        below = self.excluded_below | (self.max_log_plus >= math.log(1.0 / beta_plus))
        above = self.excluded_above | (self.max_log_minus >= math.log(1.0 / beta_minus))
        first_kept = int(np.argmin(below)) if not below.all() else below.size
        lower = float(self.grid[first_kept - 1]) if first_kept > 0 else 0.0
        top = above[::-1]
        first_kept_top = int(np.argmin(top)) if not top.all() else top.size
        upper = float(self.grid[::-1][first_kept_top - 1]) if first_kept_top > 0 else 1.0
        return Interval(lower, upper)

    def interval(self) -> Interval:
        """(lower, upper) with theta > lower and theta < upper unless equal to a bound, w.p. >= 1 - alpha.

        lower = the largest grid point below which every candidate is excluded from below (0 if none);
        upper symmetric. Decision points (1/2, 1/2 +- margin) are on the grid, so decisions are exact.
        """
        below = self.excluded_below
        first_kept = int(np.argmin(below)) if not below.all() else below.size
        lower = float(self.grid[first_kept - 1]) if first_kept > 0 else 0.0
        above = self.excluded_above[::-1]
        first_kept_top = int(np.argmin(above)) if not above.all() else above.size
        upper = float(self.grid[::-1][first_kept_top - 1]) if first_kept_top > 0 else 1.0
        return Interval(lower, upper)

    def is_excluded_below(self, m: float) -> bool:
        return bool(self.excluded_below[self.grid <= m + 1e-12].all())

    def is_excluded_above(self, m: float) -> bool:
        return bool(self.excluded_above[self.grid >= m - 1e-12].all())

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "alpha": self.alpha,
            "grid": pack(self.grid),
            "bets": {"lambdas": list(self.bets.lambdas), "growth": self.bets.growth, "clip": self.bets.clip},
            "log_k_plus": pack(self.log_k_plus),
            "log_k_minus": pack(self.log_k_minus),
            "excluded_below": pack(self.excluded_below, "u1"),
            "excluded_above": pack(self.excluded_above, "u1"),
            "max_log": [pack(self.max_log_plus), pack(self.max_log_minus)],
        }

    @classmethod
    def from_dict(cls, d: dict) -> BettingConfidenceSequence:
        b = d["bets"]
        cs = cls(d["alpha"], unpack(d["grid"]), BetSchedule(tuple(b["lambdas"]), b["growth"], b["clip"]))
        cs.log_k_plus = unpack(d["log_k_plus"]).reshape(cs.log_k_plus.shape)
        cs.log_k_minus = unpack(d["log_k_minus"]).reshape(cs.log_k_minus.shape)
        cs.excluded_below = unpack(d["excluded_below"], "u1").astype(bool)
        cs.excluded_above = unpack(d["excluded_above"], "u1").astype(bool)
        if "max_log" in d:
            cs.max_log_plus, cs.max_log_minus = unpack(d["max_log"][0]), unpack(d["max_log"][1])
        else:  # a state saved before the running max was kept: today's capital is a valid (smaller) stand-in
            log_k = math.log(len(cs.bets.lambdas))
            cs.max_log_plus = np.where(cs.excluded_below, np.inf, _logsumexp_rows(cs.log_k_plus) - log_k)
            cs.max_log_minus = np.where(cs.excluded_above, np.inf, _logsumexp_rows(cs.log_k_minus) - log_k)
        return cs


class AsymptoticConfidenceSequence:
    """Running-intersection Gaussian-mixture asymptotic CS for the mean of observations z_t that all have
    conditional mean theta (Waudby-Smith et al. 2024, Thm 2.5 for martingale differences):

        C_t = mean(z_1..z_t) +- asymptotic_cs_radius(t, sigma_hat_t, alpha),  t >= 5,
        sigma_hat_t^2 = (1/4 + sum_s (z_s - mean)^2) / t   (one pseudo-observation of the largest variance).

    Valid as t grows (asymptotic time-uniform coverage), not at every small t: use the betting CS where the
    guarantee must hold exactly. Needs no candidate grid and no bounds.
    """

    kind = "asymptotic"

    prior_var = 0.25
    min_t = 5

    def __init__(self, alpha: float, t_opt: int = 100) -> None:
        if not 0 < alpha < 1:
            raise ValueError("alpha must lie in (0, 1)")
        self.alpha = float(alpha)
        self.t_opt = int(t_opt)
        self.t = 0
        self.mean = 0.0
        self.m2 = 0.0          # Welford sum of squared deviations
        self.lower = 0.0
        self.upper = 1.0

    def update(self, z: float) -> None:
        self.t += 1
        delta = z - self.mean
        self.mean += delta / self.t
        self.m2 += delta * (z - self.mean)
        if self.t >= self.min_t:
            # one pseudo-observation at the largest variance of a [0, 1] variable keeps sigma_hat away from 0
            # when the first labels happen to agree (else the CS collapses at t = 2 and decides wrongly)
            sigma = math.sqrt((self.prior_var + self.m2) / self.t)
            r = float(asymptotic_cs_radius(self.t, sigma, self.alpha, t_opt=self.t_opt))
            self.lower = max(self.lower, self.mean - r)
            self.upper = min(self.upper, self.mean + r)

    def exclude_outside(self, lower: float, upper: float) -> None:
        self.lower = max(self.lower, lower)
        self.upper = min(self.upper, upper)

    def interval(self) -> Interval:
        return Interval(self.lower, self.upper, closed=True)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "alpha": self.alpha, "t_opt": self.t_opt, "t": self.t, "mean": self.mean,
                "m2": self.m2, "lower": self.lower, "upper": self.upper}

    @classmethod
    def from_dict(cls, d: dict) -> AsymptoticConfidenceSequence:
        cs = cls(d["alpha"], d["t_opt"])
        cs.t, cs.mean, cs.m2, cs.lower, cs.upper = d["t"], d["mean"], d["m2"], d["lower"], d["upper"]
        return cs


def confidence_sequence_from_dict(d: dict) -> BettingConfidenceSequence | AsymptoticConfidenceSequence:
    if d.get("kind") == "asymptotic":
        return AsymptoticConfidenceSequence.from_dict(d)
    return BettingConfidenceSequence.from_dict(d)


def pack(values, dtype: str = "<f8") -> str:
    """Exact, compact JSON for a numeric array: base64 of its little-endian bytes."""
    return base64.b64encode(np.ascontiguousarray(values, dtype=dtype).tobytes()).decode("ascii")


def unpack(value, dtype: str = "<f8") -> np.ndarray:
    """Inverse of pack; also accepts a plain JSON list (states written before packing)."""
    if isinstance(value, str):
        return np.frombuffer(base64.b64decode(value), dtype=dtype).copy()
    return np.asarray(value, dtype=dtype)


def _logsumexp_rows(a: np.ndarray) -> np.ndarray:
    top = a.max(axis=1)
    return top + np.log(np.exp(a - top[:, None]).sum(axis=1))


def asymptotic_cs_radius(t: np.ndarray | int, sigma_hat: np.ndarray | float, alpha: float,
                         rho: float | None = None, t_opt: int = 100) -> np.ndarray:
    """Half-width of the two-sided Gaussian-mixture asymptotic CS (Waudby-Smith et al. 2024, eq. 2).

        radius_t = sigma_hat_t * sqrt( 2 (t rho^2 + 1) / (t^2 rho^2) * log( sqrt(t rho^2 + 1) / alpha ) )

    rho tunes where the CS is tightest; the default picks rho so that it is tightest at t = t_opt
    (their eq. in Appendix B.2): rho^2 = (-2 log(alpha) + log(-2 log(alpha) + 1)) / t_opt.
    """
    if rho is None:
        rho = math.sqrt((-2 * math.log(alpha) + math.log(-2 * math.log(alpha) + 1)) / t_opt)
    t = np.asarray(t, dtype=float)
    r2 = rho * rho
    return np.asarray(sigma_hat) * np.sqrt(2 * (t * r2 + 1) / (t * t * r2) * np.log(np.sqrt(t * r2 + 1) / alpha))
