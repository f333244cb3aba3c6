"""Where the judges' savings go (issue 9): calibration lag or the confidence sequence. A diagnostic, not a
design: the oracle calibration below is fitted on the labels of the whole pool, which a real run never has, and
the what-ifs patch the sampler's constants in this process only; none of it is reachable from the service.

    python -m benchmarks.savings_gap [--runs 300] [--arena] [--arena-runs 200] [--what-ifs] [--no-write]

Per pool (600 items, theta 0.6 / 0.65, pool seeds 1 / 2, built as in benchmarks.engine) it replays, with the
same seeds (so every method draws the same pairs in the same order until it stops):
    classical       labels only;
    ppi             the engine as shipped (calibration learnt from the run's own past labels);
    oracle          ppi with a calibration fitted once on every label of the pool (``prior_from_pools([pool])``:
                    ridge, penalty 20) and used from the first label, never refitted (``OracleFrom(0)``);
    oracle from k   the shipped calibration for the first k labels, the oracle from label k on: where the lag is;
    true-ratio bets the shipped calibration, bets scaled by the *true* variance ratio Var(Y) / Var(Y - g_t) of
                    its current prediction over the pool instead of the predicted / observed one: what bet sizing
                    costs.
Fixed-n (CLT) reference: a two-sided z-interval at the same alpha that just excludes 1/2 needs
n0 = (z_{1-alpha/2} sigma / |theta - 1/2|)^2 draws with replacement, n0 / (1 + n0 / N) without (finite-population
correction), sigma = sd(Y) for labels only and sd(Y - g_oracle) for the oracle's residuals. "labels / CLT n" is
what the confidence sequence pays over a fixed-n interval that knows sigma: equal for classical and oracle means
the CS uses the prediction-powered increments as well as it uses labels. "limit, fpc" = CLT n (oracle) / CLT n
(classical): the ratio a design paying that same factor reaches, the finite pool included (the asymptotic limit
1 - R^2 assumes the labels needed are a vanishing share of the pool). Ratios come with a paired standard error
(delta method on the per-run label counts, same seeds).
Learning curve: the true pool variance ratio Var(Y - g_n) / Var(Y) of the shipped calibration fitted on n
uniformly drawn labels (mean over 200 draws), against the oracle's.
Range: the width of the increments' predictable range under uniform sampling, 1 + max g - min g, against the
range the pool's residuals Y_i - g(i) actually span (the betting CS caps its bets by the former).
Best-bet growth: a betting CS needs about log(2/alpha) / G labels, G the expected log-growth per label of its
capital at the bet it settles on, so the ratio of two designs' labels is about G_classical / G_oracle, where
    G = max over 0 < lam <= clip / (1/2 - lo) of mean_i log(1 + lam d_i),  d_i = x_i - 1/2,
the log-optimal (Kelly) constant bet against candidate 1/2 on the first draw (c(1/2) = 1/2), x_i = Y_i for
labels only and x_i = mean(g) + Y_i - g(i) for the oracle, lo the increments' predictable lower bound, clip the
CS's (0.8). Only the variance counts in the CLT (G ~ mean(d)^2 / (2 var(d)) for small effects); the log-growth
also pays for skew and tails, so "growth labels ratio" above "oracle 1 - R^2" is what the betting CS loses to
the shape of the prediction-powered increments whatever its bets (Waudby-Smith & Ramdas 2024, Sec. 5: the
growth-rate-optimal bet; Shafer 2021 / Grunwald et al. 2024 on log-optimal e-values).
--arena: the 47 Chatbot Arena pairs of `make bench` (``--arena-runs``, default 200 replays each: at 20 the
total's Monte-Carlo standard error is ~48 labels, more than the differences it is meant to show), classical /
ppi / oracle from k (0, 3, 10, 20, 40), the oracle fitted on each pair's own battles (mean vote per battle).
"Oracle from k" bounds what an online calibration can reach: a run that knew by label k everything the whole
pool's labels say about its judges.
--what-ifs: other ways of learning the judges' weight within a run, on the PandaLM pools (100 replays, the
strong judge and the shuffled, useless one) and on Arena: the empirical-Bayes factor kappa = 1/2 instead of 1
(``calibration.EB_NOISE``), no shrinkage at all (the OLS slope of the label on the judges' mean vote, the best
a strong judge can ask of its own labels), and a refit after every label up to 100 labels.
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np

import tiebreak.sampler.calibration as calibration
import tiebreak.sampler.engine as engine
from benchmarks.engine import pandalm_pool, total_se
from tiebreak.sampler.calibration import JudgeCalibration, fit_calibration, identity_coef, judge_features
from tiebreak.sampler.engine import Comparison, ComparisonConfig
from tiebreak.sampler.replay import ReplayPool, prior_from_pools
from tiebreak.services.data import load_items, select_pools

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
DOC = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- savings-gap:begin -->", "<!-- savings-gap:end -->"
CURVE_N = (3, 5, 10, 20, 40)
ARENA_RUNS = 200   # replays per Arena pair: at 20 the total's Monte-Carlo standard error is ~48 labels
ARENA_ORACLE_FROM = (0, 3, 10, 20, 40)
WHAT_IF_RUNS = 100


class OracleFrom(Comparison):
    """Benchmark-only: the shipped calibration until ``oracle_from`` labels are processed, then ``oracle``
    for the rest of the run (never refitted). Not a valid design: the oracle has seen every label."""

    oracle: JudgeCalibration
    oracle_from = 0

    def _refit(self) -> None:
        if self.processed >= self.oracle_from:
            self.calibration = self.oracle
            self._apply_calibration()
            self._set_sampler_scores()
        else:
            super()._refit()

    def _process(self, draw) -> None:
        super()._process(draw)
        if self.processed == self.oracle_from and self.calibration is not self.oracle:
            self._refit()  # exactly from label k on, whether or not the shipped schedule refits at k


class TrueRatioBets(Comparison):
    """Benchmark-only: bets scaled by the true pool variance ratio of the current prediction g_t."""

    truth: np.ndarray

    def _bet_variance_factor(self) -> float:
        if not self.uses_judges or self.calibration.n_labels == 0:
            return 1.0
        return float(min(4.0, max(0.5, self.truth.var() / max((self.truth - self.g).var(), 1e-12))))


def run_labels(cls: type[Comparison], pool: ReplayPool, config: ComparisonConfig, runs: int, seed: int,
               **attrs) -> np.ndarray:
    """Labels to the end of each run, exactly as sampler.replay.replay runs them (same seeds, the annotator
    draws one of the pair's recorded votes with the run's Generator; label noise bounded when votes differ)."""
    config = replace(config, pool_growth_alpha_share=0.0, label_noise=config.label_noise or pool.noisy)
    judge_votes = pool.judge_votes if config.method != "classical" else None
    out = []
    for s in np.random.SeedSequence(seed).spawn(runs):
        rng = np.random.default_rng(s)
        cmp = cls(judge_votes, n_items=len(pool.votes), config=config, rng=rng)
        for k, v in attrs.items():
            setattr(cmp, k, v)
        if isinstance(cmp, OracleFrom) and cmp.oracle_from == 0:
            cmp._refit()
        while not cmp.finished:
            items = cmp.next_items(1)
            if not items:
                break
            votes = pool.votes[items[0]]
            cmp.record_label(items[0], float(votes[rng.integers(votes.size)]) if votes.size > 1 else float(votes[0]))
        out.append(len(cmp.labels))
    return np.asarray(out, dtype=float)


def _unshrunk_mean_fit(shipped):
    """What-if: the prediction is ybar + b (vbar - mean vbar), b >= 0 the OLS slope of the labels on the judges'
    mean vote, unshrunk (the shipped fit still gives the variance ratio the bets use)."""
    def fit(x, y, grid=calibration.PENALTY_GRID, svd=None):
        b0, beta, ratio = shipped(x, y, grid, svd)
        if grid is not calibration.MEAN_FIT_PENALTIES:
            return b0, beta, ratio
        ident = identity_coef(x.shape[1])
        v = x @ ident
        vc = v - v.mean()
        if float(vc @ vc) <= 0.0:
            return b0, beta, ratio
        b = max(0.0, float(vc @ (y - y.mean())) / float(vc @ vc))
        return float(y.mean() - b * v.mean()), b * ident, ratio
    return fit


WHAT_IFS = ("shipped", "kappa 1/2", "no shrinkage (OLS slope on the mean vote)", "refit after every label to 100")


@contextmanager
def what_if(name: str) -> Iterator[None]:
    """Patch the sampler's module constants for one what-if (this process only), restore them after."""
    saved: list[tuple[object, str, object]] = []

    def patch(mod: object, attr: str, value: object) -> None:
        saved.append((mod, attr, getattr(mod, attr)))
        setattr(mod, attr, value)

    if name == WHAT_IFS[1]:
        patch(calibration, "EB_NOISE", 0.5)
    elif name == WHAT_IFS[2]:
        patch(calibration, "shrunk_ridge_fit", _unshrunk_mean_fit(calibration.shrunk_ridge_fit))
    elif name == WHAT_IFS[3]:
        shipped_due = engine._refit_due
        patch(engine, "_refit_due", lambda n, m, step=engine.REFIT_MIN_STEP: n >= m and (n <= 100 or shipped_due(n, m)))
    try:
        yield
    finally:
        for mod, attr, value in reversed(saved):
            setattr(mod, attr, value)


def clt_n(sigma: float, effect: float, n_pool: int, alpha: float) -> float:
    n0 = (NormalDist().inv_cdf(1 - alpha / 2) * sigma / effect) ** 2
    return n0 / (1 + n0 / n_pool)


def paired_ratio(a: np.ndarray, c: np.ndarray) -> tuple[float, float]:
    """mean(a) / mean(c) and its delta-method standard error over paired runs."""
    r = float(a.mean() / c.mean())
    return r, float((a - r * c).std(ddof=1) / np.sqrt(a.size) / c.mean())


def best_growth(d: np.ndarray, lower: float, clip: float = 0.8) -> float:
    """max over 0 < lam <= clip / (-lower) of mean(log(1 + lam d)): the log-optimal constant bet's growth."""
    lams = np.linspace(1e-3, clip / -lower, 2000)
    return float(np.max(np.mean(np.log1p(lams[:, None] * d[None, :]), axis=1)))


def learning_curve(pool: ReplayPool, reps: int = 200, seed: int = 0) -> list[float]:
    y = np.array([v.mean() for v in pool.votes])
    x = judge_features(pool.judge_votes)
    rng = np.random.default_rng(seed)
    acc = np.zeros(len(CURVE_N))
    for _ in range(reps):
        order = rng.permutation(y.size)
        for j, n in enumerate(CURVE_N):
            g = fit_calibration(x[order[:n]], y[order[:n]]).predict(x)
            acc[j] += (y - g).var() / y.var()
    return (acc / reps).tolist()


def pandalm_pools(tmp: Path) -> list[tuple[str, ReplayPool, float]]:
    out = []
    for theta in (0.6, 0.65):
        for pool_seed in (1, 2):
            pool, limit = pandalm_pool(theta, pool_seed, tmp)
            out.append((f"theta {theta}, pool seed {pool_seed}", pool, limit))
    return out


def shuffled(pool: ReplayPool, seed: int) -> ReplayPool:
    """The judges' votes permuted across pairs (rng seed = pool seed, as benchmarks.engine): a useless judge."""
    return ReplayPool(pool.votes, pool.judge_votes[np.random.default_rng(seed).permutation(len(pool.votes))])


def pandalm_table(pools: list[tuple[str, ReplayPool, float]], runs: int, seed: int) -> list[str]:
    cfg = ComparisonConfig(method="ppi", grid_resolution=20)
    rows: list[dict[str, Any]] = []
    for name, pool, limit in pools:
        y = np.array([v.mean() for v in pool.votes])
        oracle = prior_from_pools([pool])
        g = oracle.predict(judge_features(pool.judge_votes))
        resid = y - g
        effect = abs(float(y.mean()) - 0.5)
        labels = {
            "classical": run_labels(Comparison, pool, replace(cfg, method="classical"), runs, seed),
            "ppi": run_labels(Comparison, pool, cfg, runs, seed),
            "true-ratio bets": run_labels(TrueRatioBets, pool, cfg, runs, seed, truth=y),
        }
        for k in (0, 3, 10, 20):
            labels[f"oracle from {k}"] = run_labels(OracleFrom, pool, cfg, runs, seed, oracle=oracle, oracle_from=k)
        rows.append({
            "pool": name, "limit": limit, "r_oracle": float(resid.var() / y.var()),
            "clt_c": clt_n(float(y.std()), effect, y.size, cfg.alpha),
            "clt_o": clt_n(float(resid.std()), effect, y.size, cfg.alpha),
            "mean": {k: float(v.mean()) for k, v in labels.items()},
            "ratio": {k: paired_ratio(v, labels["classical"]) for k, v in labels.items() if k != "classical"},
            "curve": learning_curve(pool),
            "range": (1 + float(g.max() - g.min()), float(resid.max() - resid.min())),
            "growth_ratio": best_growth(y - 0.5, -0.5) / best_growth(g.mean() + resid - 0.5,
                                                                     float(g.mean() - g.max()) - 0.5),
        })
        print(json.dumps(rows[-1]), flush=True)
    methods = ["ppi", "oracle from 0", "oracle from 3", "oracle from 10", "oracle from 20", "true-ratio bets"]
    lines = [
        "| pool | limit (cells) | oracle 1 - R^2 | limit, fpc | classical labels / CLT n | oracle labels / CLT n | "
        + " | ".join(f"{m} / classical" for m in methods) + " |",
        "|---|---|---|---|---|---|" + "---|" * len(methods),
    ]
    for r in rows:
        c, o = r["mean"]["classical"], r["mean"]["oracle from 0"]
        lines.append(
            f"| {r['pool']} | {r['limit']:.3f} | {r['r_oracle']:.3f} | {r['clt_o'] / r['clt_c']:.3f} | "
            f"{c:.1f} / {r['clt_c']:.1f} = {c / r['clt_c']:.2f} | {o:.1f} / {r['clt_o']:.1f} = {o / r['clt_o']:.2f} | "
            + " | ".join(f"{r['ratio'][m][0]:.3f} ± {r['ratio'][m][1]:.3f}" for m in methods) + " |")
    curve = ["| pool | " + " | ".join(f"n = {n}" for n in CURVE_N) + " | oracle 1 - R^2 | best-bet growth labels "
             "ratio, oracle / classical | increments' range: predictable / spanned |",
             "|---|" + "---|" * (len(CURVE_N) + 3)]
    for r in rows:
        curve.append(f"| {r['pool']} | " + " | ".join(f"{v:.3f}" for v in r["curve"]) + f" | {r['r_oracle']:.3f} | "
                     f"{r['growth_ratio']:.3f} | {r['range'][0]:.2f} / {r['range'][1]:.2f} |")
    return [f"PandaLM fixed-theta pools, {runs} replays per method and pool (seed {seed}); ratios ± paired "
            "standard error:", "", *lines, "",
            "Learning curve, Var(Y - g_n) / Var(Y) over the pool of the shipped calibration fitted on n uniformly "
            "drawn labels (200 draws); the labels ratio the best constant bets' growth gives; the range of the "
            "prediction-powered increments:", "", *curve]


def arena_pools():
    return select_pools(load_items(DATA / "chatbot_arena_ppr.jsonl"), all_pairs=True, min_items=200)


def arena_labels(pools, cls: type[Comparison], method: str, runs: int, oracle_from: int | None = None) -> np.ndarray:
    """Labels of every replay, pairs x runs (same seeds as ``tiebreak replay --runs R``)."""
    cfg = ComparisonConfig(method=method, grid_resolution=20)
    out = []
    for op in pools:
        attrs = {} if oracle_from is None else {"oracle": prior_from_pools([op.pool]), "oracle_from": oracle_from}
        out.append(run_labels(cls, op.pool, cfg, runs, 0, **attrs))
    return np.asarray(out)


def arena_total(pools, cls: type[Comparison], method: str, runs: int, oracle_from: int | None = None) -> float:
    return float(arena_labels(pools, cls, method, runs, oracle_from).mean(axis=1).sum())


def arena_table(runs: int) -> list[str]:
    pools = arena_pools()
    classical = arena_labels(pools, Comparison, "classical", runs)
    rows = [("classical", classical), ("ppi", arena_labels(pools, Comparison, "ppi", runs))]
    for k in ARENA_ORACLE_FROM:
        rows.append((f"ppi, oracle from {k}", arena_labels(pools, OracleFrom, "ppi", runs, k)))
        print(rows[-1][0], rows[-1][1].mean(axis=1).sum(), flush=True)
    c = classical.mean(axis=1).sum()
    return [f"Chatbot Arena, the 47 pairs of `make bench`, {runs} replays each, total mean labels ± Monte-Carlo "
            "standard error, and against classical ± paired standard error (the oracle is fitted on each pair's own "
            "battles):", "", "| design | total mean labels | / classical |", "|---|---|---|",
            *(f"| {n} | {v.mean(axis=1).sum():,.1f} ± {total_se(v):.1f} | {v.mean(axis=1).sum() / c:.3f} ± "
              f"{total_se(v - classical) / c:.3f} |" for n, v in rows)]


def what_if_table(pools: list[tuple[str, ReplayPool, float]], arena_runs: int) -> list[str]:
    cfg = ComparisonConfig(method="ppi", grid_resolution=20)
    arena = arena_pools()
    classical = {name: run_labels(Comparison, pool, replace(cfg, method="classical"), WHAT_IF_RUNS, 0).mean()
                 for name, pool, _ in pools}
    lines = [f"What-ifs (ppi; PandaLM {WHAT_IF_RUNS} replays per pool, Arena {arena_runs} per pair):", "",
             "| calibration | strong judge / classical (4 pools) | mean | useless judge / classical, worst | "
             "Arena total mean labels |", "|---|---|---|---|---|"]
    for name in WHAT_IFS:
        with what_if(name):
            strong = [run_labels(Comparison, pool, cfg, WHAT_IF_RUNS, 0).mean() / classical[n] for n, pool, _ in pools]
            useless = [run_labels(Comparison, shuffled(pool, int(n[-1])), cfg, WHAT_IF_RUNS, 0).mean() / classical[n]
                       for n, pool, _ in pools]
            total = arena_total(arena, Comparison, "ppi", arena_runs)
        lines.append(f"| {name} | {' / '.join(f'{x:.3f}' for x in strong)} | {np.mean(strong):.3f} | "
                     f"{max(useless):.3f} | {total:,.1f} |")
        print(lines[-1], flush=True)
    return lines


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=300, help="replays per method and PandaLM pool")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--arena", action="store_true", help="also the Arena rows (~10 min at 200 replays)")
    ap.add_argument("--arena-runs", type=int, default=ARENA_RUNS, help="replays per Arena pair")
    ap.add_argument("--what-ifs", action="store_true", help="also the what-if table (~5 min)")
    ap.add_argument("--no-write", action="store_true", help="print only; do not rewrite docs/benchmarks.md")
    args = ap.parse_args()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        pools = pandalm_pools(Path(tmp))
        parts = pandalm_table(pools, args.runs, args.seed)
        if args.arena:
            parts += ["", *arena_table(args.arena_runs)]
        if args.what_ifs:
            parts += ["", *what_if_table(pools, args.arena_runs)]
    flags = "".join(f" --{f}" for f, on in (("arena", args.arena), ("what-ifs", args.what_ifs)) if on)
    if (args.arena or args.what_ifs) and args.arena_runs != ARENA_RUNS:
        flags += f" --arena-runs {args.arena_runs}"
    block = "\n".join([BEGIN, f"`python -m benchmarks.savings_gap --runs {args.runs}{flags}` "
                       f"({time.perf_counter() - start:.0f} s on a shared 2-core machine, "
                       f"{time.strftime('%Y-%m-%d')}).", "", *parts, END])
    print(block)
    if not args.no_write:
        doc = DOC.read_text()
        if BEGIN in doc:
            doc = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: block, doc, flags=re.S)
            DOC.write_text(doc)
            print(f"wrote {DOC}")
        else:
            print(f"{DOC} has no {BEGIN} marker: not written")


if __name__ == "__main__":
    main()
