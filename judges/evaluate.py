"""Judge agreement with human labels on recorded data (schema of shared/data/README.md).

Orientation: ``response_a`` plays "base", ``response_b`` plays "tuned", so P(tuned better) = P(B better);
judges still see both presentation orders.

What the sampler uses is not a judge's raw verdict but its CALIBRATED vote g(x): sampler/calibration.py's
ridge regression of the human verdict Y ∈ {0, ½, 1} on the judges' votes. So besides raw agreement this module
reports, per judge and for the whole jury, cross-fitted (K folds: g fitted on the other folds, predicted on
this one) with ``fit_calibration`` itself:

    decisive_agreement_calibrated = mean over decisive items of [ (g > ½) == (Y = 1) ]
    explained_variance            = 1 − Var(Y − g) / Var(Y)          (all items, ties as Y = ½)

Explained variance is what saves labels: prediction-powered inference with calibrated votes g has the
variance of Y − g instead of Y (Angelopoulos et al. 2023, "Prediction-powered inference"; PPI++), so a jury
with explained variance R² needs about (1 − R²) times the labels of a labels-only test for the same width.
Cost is CPU-seconds of the judging process per pair (``time.process_time``: all llama.cpp threads, not
inflated by other processes' load); information per CPU-second = explained_variance / CPU-seconds per pair.
"""

from __future__ import annotations

import json
import math
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tiebreak.judges.injection import DEFAULT_INJECTION, judge_directed_sentences
from tiebreak.judges.jury import JudgeVote, ensemble
from tiebreak.sampler.calibration import fit_calibration, judge_features

HUMAN_Y = {"A": 0.0, "B": 1.0, "tie": 0.5}


def load_items(path: str | Path, limit: int | None = None, seed: int = 0, balanced: bool = False
               ) -> list[dict[str, Any]]:
    """Items with question, both responses and a human label; a seeded random sample of ``limit``.

    ``balanced``: decisive items only (human A or B), as many A as B (``limit`` rounded down to even), so
    that "always A", "always B" and a constant calibration all score 0.5.
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(f"file not found: {path}")
    items = []
    with path.open() as f:
        for ln, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{ln}: not JSON ({e.msg})") from None
            if not isinstance(r, dict):
                raise ValueError(f"{path}:{ln}: expected a JSON object")
            for k in ("question", "response_a", "response_b"):
                # some source rows carry a JSON scalar where the text was e.g. "True" (PandaLM ids 157-162)
                if isinstance(r.get(k), bool | int | float):
                    r[k] = str(r[k])
            if r.get("question") and r.get("response_a") and r.get("response_b") and r.get("human_label") in HUMAN_Y:
                items.append(r)
    if not items:
        raise ValueError(f"{path}: no items with question, response_a, response_b and human_label (A/B/tie)")
    if balanced:
        rng = random.Random(seed)
        a = [r for r in items if r["human_label"] == "A"]
        b = [r for r in items if r["human_label"] == "B"]
        per_side = min(len(a), len(b)) if limit is None else min(len(a), len(b), limit // 2)
        if per_side < 1:
            raise ValueError(f"{path}: --balanced needs decisive items labelled A and B (found {len(a)} A, "
                             f"{len(b)} B) and --limit ≥ 2")
        items = rng.sample(a, per_side) + rng.sample(b, per_side)
        rng.shuffle(items)
        return items
    if limit is not None and limit < len(items):
        items = random.Random(seed).sample(items, limit)
    return items


def verdict(p: float) -> str:
    if p is None or math.isnan(p) or p == 0.5:
        return "tie"
    return "B" if p > 0.5 else "A"


def three_way_agreement(votes: Sequence[float] | np.ndarray, human: Sequence[float] | np.ndarray) -> float:
    """Share of pairs on which the judge's three-way verdict equals the human's.

    Judge: tuned if vote > 1/2, base if vote < 1/2, tie at exactly 1/2 (or a missing vote, NaN) -- the same side
    as ``verdict`` and decisive agreement. Human: ``y`` in {1 (tuned), 0 (base), 1/2 (tie)}.

    Why no tie band (e.g. 0.4-0.6): the local judges' votes sit within ~0.01 of 1/2 (their signal is a small
    shift between the two orders, docs/benchmarks.md "Judges"), so a band would call every such vote a tie and
    the metric would measure only how often humans tie. A judge that means "tie" says 1/2 (recorded judges do).
    """
    v = np.asarray(votes, dtype=float)
    y = np.asarray(human, dtype=float)
    if v.shape != y.shape:
        raise ValueError(f"votes and human labels differ in length ({v.shape} vs {y.shape})")
    if not v.size:
        return math.nan
    judge = np.where(np.isnan(v), 0.5, np.sign(v - 0.5) * 0.5 + 0.5)
    return float(np.mean(judge == y))


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


# Ridge penalty of the cross-fitted calibration here. The sampler's default (EngineConfig.calibration_penalty =
# 20 pseudo-labels) is a prior strength for runs with hundreds of labels; on an evaluation set of tens of
# pairs it would shrink every judge to the label mean and measure the shrinkage, not the judge. 1.0 keeps the
# same family (and the same code) with a prior worth one label; --calibration-penalty 20 gives the sampler's
# early-run view.
EVAL_PENALTY = 1.0


@dataclass(frozen=True)
class CrossFit:
    """Cross-fitted calibration of one feature set (see the module docstring for the formulas)."""

    decisive_agreement: float | None
    explained_variance: float | None
    predictions: np.ndarray  # g per item (NaN where no fold could be fitted)


def cross_fitted_calibration(votes: np.ndarray, y: np.ndarray, folds: int = 5, seed: int = 0,
                             penalty: float = EVAL_PENALTY) -> CrossFit:
    """K-fold cross-fitted ``sampler.calibration.fit_calibration`` on ``judge_features(votes)``.

    ``votes``: (N, J) in [0, 1], NaN = missing (the sampler's input); ``y``: human verdicts in {0, ½, 1}.
    Folds are a seeded permutation split round-robin; every item is predicted by a fit that never saw it.
    """
    votes = np.asarray(votes, dtype=float).reshape(len(y), -1)
    y = np.asarray(y, dtype=float)
    n = len(y)
    if n < 2 * folds:
        return CrossFit(None, None, np.full(n, np.nan))
    x = judge_features(votes)
    idx = np.random.default_rng(seed).permutation(n)
    g = np.empty(n)
    for k in range(folds):
        te = idx[k::folds]
        tr = np.setdiff1d(idx, te)
        g[te] = fit_calibration(x[tr], y[tr], penalty).predict(x[te])
    dec = y != 0.5
    agree = float(np.mean((g[dec] > 0.5) == (y[dec] == 1.0))) if dec.any() else None
    var_y = float(np.var(y))
    ev = (1.0 - float(np.var(y - g)) / var_y) if var_y > 0 else None
    return CrossFit(agree, ev, g)


def cross_fitted_agreement(X: np.ndarray, y: np.ndarray, folds: int = 5, seed: int = 0) -> float | None:
    """Decisive agreement of the sampler's calibration (binary y, cross-fitted); kept for callers of v1."""
    X = np.asarray(X, dtype=float)
    return cross_fitted_calibration(X, np.asarray(y, dtype=float), folds, seed).decisive_agreement


class RecordedJudge:
    """The verdicts already recorded in the data file (``item["judges"]``), e.g. GPT-4 on Vicuna-80, as a
    reference juror. ``recorded:gpt-4`` averages every recorded column whose name is ``gpt-4`` or
    ``gpt-4(<order>)`` (both presentation orders), mapping A → 0, B → 1, tie → ½. No model runs: cost 0."""

    mode = "recorded"

    def __init__(self, judge: str):
        self.judge = judge
        self.name = f"recorded:{judge}"
        self._by_text: dict[tuple[str, str, str], dict] = {}

    def bind(self, items: Sequence[dict]) -> None:
        self._by_text = {(it["question"], it["response_a"], it["response_b"]): it for it in items}

    def columns(self, item: dict) -> list[str]:
        return [k for k in (item.get("judges") or {}) if k == self.judge or k.startswith(self.judge + "(")]

    def vote(self, prompt: str, base: str, tuned: str, criterion: str = "overall", cache=None,
             inject: str | None = None, injection: str = "") -> JudgeVote:
        it = self._by_text.get((prompt, base, tuned), {})
        vals = [HUMAN_Y[v] for k in self.columns(it) if (v := it["judges"][k]) in HUMAN_Y]
        p = float(np.mean(vals)) if vals else math.nan
        return JudgeVote(self.name, criterion, p, (p, p), 0.0, len(tuned or "") - len(base or ""), 0.0,
                         (None, None), False, 0.0)


def vote_columns(judge_mode: str, votes: Sequence[JudgeVote], per_order: bool = True) -> np.ndarray:
    """(N, k) calibration inputs of one judge: its vote, and for a pairwise judge with ``per_order`` also the
    two presentation orders' P(tuned better) as separate columns (the calibration may weight them apart)."""
    cols = [[v.p_tuned_better for v in votes]]
    if judge_mode == "pairwise" and per_order:
        cols += [[v.p_by_order[0] for v in votes], [v.p_by_order[1] for v in votes]]
    if judge_mode == "rubric" and per_order and votes and votes[0].extra:
        cols += [[dict(v.extra).get(q, math.nan) for v in votes] for q, _ in votes[0].extra]
    return np.array(cols, dtype=float).T


def column_names(name: str, judge_mode: str, votes: Sequence[JudgeVote], per_order: bool = True) -> list[str]:
    """Names of ``vote_columns`` (for the reported calibration weights)."""
    out = [name]
    if judge_mode == "pairwise" and per_order:
        out += [f"{name}:tuned_as_B", f"{name}:tuned_as_A"]
    if judge_mode == "rubric" and per_order and votes and votes[0].extra:
        out += [f"{name}:{q}" for q, _ in votes[0].extra]
    return out


def _nanmean(x: Sequence[float]) -> float:
    a = np.asarray(x, dtype=float)
    return float(np.nanmean(a)) if not np.isnan(a).all() else math.nan


def _mean_or_none(x: Sequence[float] | np.ndarray) -> float | None:
    a = np.asarray(x, dtype=float)
    return float(np.nanmean(a)) if a.size and not np.isnan(a).all() else None


def _metrics(ps: np.ndarray, orders: np.ndarray, picks: list[tuple], secs: np.ndarray, labels: list[str],
             flips: list[bool], pointwise: bool) -> dict[str, Any]:
    v = [verdict(p) for p in ps]
    dec = [(a, h) for a, h in zip(v, labels, strict=True) if a != "tie" and h != "tie"]
    o1 = np.array([verdict(x) for x in orders[:, 0]])
    o2 = np.array([verdict(x) for x in orders[:, 1]])
    both = [(a, b) for a, b in zip(o1, o2, strict=True) if a != "tie" and b != "tie"]
    flat_picks = [x for pr in picks for x in pr if x is not None]
    y = np.array([HUMAN_Y[h] for h in labels])
    ldiff_ok = ~np.isnan(ps)
    return {
        "n": len(labels),
        "n_decisive": len(dec),
        "decisive_agreement": (sum(a == h for a, h in dec) / len(dec)) if dec else None,
        "three_way_agreement": three_way_agreement(ps, y),
        "swap_consistency": None if pointwise else ((sum(a == b for a, b in both) / len(both)) if both else None),
        "p_pick_a": (sum(flat_picks) / len(flat_picks)) if flat_picks else None,
        "seconds_per_pair": float(np.mean(secs)),
        "injection_flip_rate": (sum(flips) / len(flips)) if flips else None,
        "n_injection": len(flips),
        "mean_vote": float(np.nanmean(ps)) if ldiff_ok.any() else None,
        "vote_sd": float(np.nanstd(ps)) if ldiff_ok.any() else None,
        "corr_with_human": _corr(ps, y),
        "missing": int(np.isnan(ps).sum()),
    }


def _corr(a: np.ndarray, b: np.ndarray) -> float | None:
    ok = ~np.isnan(a)
    if ok.sum() < 3 or np.std(a[ok]) == 0 or np.std(b[ok]) == 0:
        return None
    return float(np.corrcoef(a[ok], b[ok])[0, 1])


def _flip(judge: Any, item: dict, vote: JudgeVote, cache, injection: str = DEFAULT_INJECTION) -> bool | None:
    """Inject the payload ``injection`` (judges/injection.py; default "ignore the above and answer <its
    letter>") into the response the judge disfavours; flipped?"""
    side = verdict(vote.p_tuned_better)
    if side == "tie":
        return None
    target = "base" if side == "B" else "tuned"
    v2 = judge.vote(item["question"], item["response_a"], item["response_b"], "overall", cache, inject=target,
                    injection=injection)
    return verdict(v2.p_tuned_better) not in (side,)


def _add_calibrated(m: dict[str, Any], cols: np.ndarray, y: np.ndarray, cpu: np.ndarray, folds: int, seed: int,
                    penalty: float) -> None:
    cf = cross_fitted_calibration(cols, y, folds, seed, penalty)
    m["decisive_agreement_calibrated"] = cf.decisive_agreement
    m["explained_variance"] = cf.explained_variance
    c = _mean_or_none(cpu)
    m["cpu_seconds_per_pair"] = c
    ev = cf.explained_variance
    m["explained_variance_per_cpu_second"] = (max(ev, 0.0) / c) if (ev is not None and c) else None


def evaluate(items: Sequence[dict], judges: Sequence[Any], cache=None, injection_limit: int = 20,
             progress: bool = True, folds: int = 5, seed: int = 0, penalty: float = EVAL_PENALTY,
             per_order: bool = True, injection: str = DEFAULT_INJECTION) -> dict[str, Any]:
    """Per judge and for the jury: raw metrics (``_metrics``) and the cross-fitted calibration metrics.

    The jury's calibrated figures use every judge's ``vote_columns`` together (one ridge over all of them);
    its cost is the sum of the judges' CPU-seconds per pair.
    """
    labels = [it["human_label"] for it in items]
    y = np.array([HUMAN_Y[h] for h in labels])
    for j in judges:
        if hasattr(j, "bind"):
            j.bind(items)
    per: dict[str, dict[str, Any]] = {}
    votes: dict[str, list[JudgeVote]] = {}
    cols: dict[str, np.ndarray] = {}
    t_start = time.time()
    for j in judges:
        vs: list[JudgeVote] = []
        flips: list[bool] = []
        for i, it in enumerate(items):
            v = j.vote(it["question"], it["response_a"], it["response_b"], "overall", cache)
            vs.append(v)
            if i < injection_limit:
                f = _flip(j, it, v, cache, injection)
                if f is not None:
                    flips.append(f)
            if progress and (i + 1) % 10 == 0:
                print(f"[judge-eval] {j.name}: {i + 1}/{len(items)} pairs, {time.time() - t_start:.0f}s",
                      file=sys.stderr, flush=True)
        name = str(j.name)
        votes[name] = vs
        ps = np.array([v.p_tuned_better for v in vs])
        m = _metrics(ps, np.array([v.p_by_order for v in vs]), [v.picks_a for v in vs],
                     np.array([v.seconds for v in vs]), labels, flips, j.mode != "pairwise")
        cols[name] = vote_columns(j.mode, vs, per_order)
        _add_calibrated(m, cols[name], y, np.array([v.cpu_seconds for v in vs]), folds, seed, penalty)
        m["mode"] = j.mode
        m["truncated_responses"] = int(sum(getattr(v, "truncated", 0) for v in vs))
        per[name] = m
    names = list(votes)
    comb, orders, picks, secs, cpus, flips_e = [], [], [], [], [], []
    for i, _it in enumerate(items):
        vs_i = [votes[n][i] for n in names]
        c, _d = ensemble(vs_i)
        comb.append(c)
        orders.append([_nanmean([v.p_by_order[0] for v in vs_i]), _nanmean([v.p_by_order[1] for v in vs_i])])
        picks.append(tuple(x for v in vs_i for x in v.picks_a))
        secs.append(sum(v.seconds for v in vs_i))
        cpus.append(sum(v.cpu_seconds for v in vs_i))
    # ensemble injection flip: re-vote the injected pairs with every judge (cached from the per-judge pass)
    for i, it in enumerate(items[:injection_limit]):
        side = verdict(comb[i])
        if side != "tie":
            flips_e.append(verdict(ensemble(_injected_votes(it, judges, side, cache, injection))[0]) != side)
    ens = _metrics(np.array(comb), np.array(orders), picks, np.array(secs), labels, flips_e,
                   all(j.mode != "pairwise" for j in judges))
    X = np.hstack([cols[n] for n in names])
    _add_calibrated(ens, X, y, np.array(cpus), folds, seed, penalty)
    # calibrated-jury injection flip: the verdict of g (fitted on all items) before/after the injection
    full = fit_calibration(judge_features(X), y, penalty)
    modes = {str(j.name): j.mode for j in judges}
    col_names = [c for n in names for c in column_names(n, modes[n], votes[n], per_order)]
    ens["calibration_weights"] = dict(zip(col_names, full.coef[:X.shape[1]], strict=True))
    ens["injection_flip_rate_calibrated"] = _calibrated_flip_rate(items[:injection_limit], judges, names, full,
                                                                  cache, per_order, injection)
    ens["judges"] = names
    lw = [("B" if len(it["response_b"]) > len(it["response_a"]) else "A") for it in items]
    lw_dec = [(a, h) for a, h in zip(lw, labels, strict=True) if h != "tie"]
    baselines = {"longer_wins_decisive_agreement": (sum(a == h for a, h in lw_dec) / len(lw_dec)) if lw_dec else None,
                 "human_tie_rate": labels.count("tie") / len(labels),
                 # false positives of the judge-directed filter on this (clean) data: responses that lost a sentence
                 "responses_with_judge_directed_text": sum(bool(judge_directed_sentences(it[k])) for it in items
                                                           for k in ("response_a", "response_b"))}
    return {"judges": per, "ensemble": ens, "baselines": baselines, "items": len(items),
            "wall_seconds": time.time() - t_start, "injection": injection,
            "calibration": {"family": "tiebreak.sampler.calibration.fit_calibration (ridge on judge_features)",
                            "penalty": penalty, "folds": folds, "seed": seed, "per_order_columns": per_order}}


def _injected_votes(it: dict, judges: Sequence[Any], side: str, cache, injection: str = DEFAULT_INJECTION
                    ) -> list[JudgeVote]:
    """Every judge's vote on item ``it`` with the injection payload on the response the verdict ``side`` ("A":
    base, "B": tuned preferred) disfavours: a robust jury keeps its verdict."""
    target = "base" if side == "B" else "tuned"
    return [j.vote(it["question"], it["response_a"], it["response_b"], "overall", cache, inject=target,
                   injection=injection) for j in judges]


def _calibrated_flip_rate(items: Sequence[dict], judges: Sequence[Any], names: list[str], cal, cache,
                          per_order: bool, injection: str = DEFAULT_INJECTION) -> float | None:
    """Share of pairs whose calibrated-jury verdict flips when the response it disfavours carries the
    injection payload (every judge re-votes on the injected pair; the calibration stays fixed)."""
    flips = []
    for it in items:
        clean = [j.vote(it["question"], it["response_a"], it["response_b"], "overall", cache) for j in judges]
        x = np.hstack([vote_columns(j.mode, [v], per_order) for j, v in zip(judges, clean, strict=True)])
        g = float(cal.predict(judge_features(x))[0])
        side = verdict(g)
        if side == "tie":
            continue
        inj = _injected_votes(it, judges, side, cache, injection)
        xi = np.hstack([vote_columns(j.mode, [v], per_order) for j, v in zip(judges, inj, strict=True)])
        flips.append(verdict(float(cal.predict(judge_features(xi))[0])) != side)
    return (sum(flips) / len(flips)) if flips else None


def _prevote_worker(names: list[str], judge_kwargs: dict[str, Any], cache_path: str, items: list[dict],
                    n_inject: int, injection: str, threads: int) -> tuple[int, float]:
    """One worker process of ``prevote``: its own model copy with ``threads`` llama.cpp threads; every model
    juror's vote on ``items`` (and, on the first ``n_inject``, its injected re-vote) into the shared cache.
    Returns (votes computed, CPU-seconds of this process)."""
    import os

    os.environ["TIEBREAK_THREADS"] = str(threads)
    from tiebreak.judges.cache import SqliteVoteCache
    from tiebreak.judges.jury import judges_from_names

    cache = SqliteVoteCache(cache_path)
    judges = judges_from_names(names, **judge_kwargs)
    c0 = time.process_time()
    n = 0
    for i, it in enumerate(items):
        for j in judges:
            v = j.vote(it["question"], it["response_a"], it["response_b"], "overall", cache)
            n += 1
            if i < n_inject:
                _flip(j, it, v, cache, injection)
    return n, time.process_time() - c0


def prevote(items: Sequence[dict], names: Sequence[str], cache_path: str | Path, workers: int,
            judge_kwargs: dict[str, Any] | None = None, injection_limit: int = 0,
            injection: str = DEFAULT_INJECTION, cores: int | None = None) -> dict[str, Any]:
    """Vote ``items`` with the model jurors of ``names`` in ``workers`` processes, one model copy and
    ``cores // workers`` llama.cpp threads each, pairs dealt round robin (both responses of a pair go to one
    process, so its prompt cache serves the shared prefix), into the sqlite vote cache at ``cache_path``;
    ``evaluate`` then reads them from the cache.

    Why processes and not threads of one model: llama.cpp serialises a context, and on these 2 shared cores
    one thread per process costs less CPU per token than two threads of one process (which wait for each other
    whenever another process holds a core). Feature and recorded jurors cost nothing and are skipped here.
    Returns {"workers", "threads_per_worker", "votes", "wall_seconds", "cpu_seconds"} (CPU of the workers).
    """
    import os
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    from tiebreak.judges.jury import FEATURE_PREFIX, RECORDED_PREFIX

    model_names = [n for n in names if not n.startswith((FEATURE_PREFIX, RECORDED_PREFIX)) and n != "features"]
    cores = cores or os.cpu_count() or 2
    threads = max(1, cores // max(1, workers))
    out = {"workers": workers, "threads_per_worker": threads, "votes": 0, "wall_seconds": 0.0, "cpu_seconds": 0.0}
    if not model_names or not items:
        return out
    t0 = time.perf_counter()
    items = list(items)
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as ex:
        futs = [ex.submit(_prevote_worker, model_names, dict(judge_kwargs or {}), str(cache_path), items[k::workers],
                          len(items[:injection_limit][k::workers]), injection, threads) for k in range(workers)]
        res = [f.result() for f in futs]
    out.update(votes=sum(n for n, _ in res), cpu_seconds=sum(c for _, c in res),
               wall_seconds=time.perf_counter() - t0)
    return out
