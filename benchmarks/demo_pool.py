"""Labels to decision on candidate demo pools (issue 10 item 4): does a judge visibly save labels there?

``python -m benchmarks.demo_pool [--runs 40] [--pools 0.6:600:1,0.6:600:2] [--quick]`` from the repo root (with
../shared/data beside it). For each fixed-θ PandaLM pool θ:n:seed (built exactly as the packaged demo pool, by
services/demo_data/derive.py's ``pandalm_rows``) it replays, with the demo's α = 0.05 and margin 0.05 and
``--runs`` seeded runs each: labels only (classical), the recorded GPT-3.5-turbo + PandaLM-7B verdicts
(active, as the demo's recorded lane) and the default local jury's feature votes (active, as the demo's live
lane; computed here with judges.features, the same code the pipeline runs). Per row: mean and 10th-90th
percentile of labels, the ratio to labels only, the share of runs where the judge needed fewer labels than the
labels-only run with the same seed, and the limit 1 − R² (R² = share of label variance the judges' votes
explain on the whole pool: cell means over the vote patterns for the recorded verdicts, least squares on the
three feature votes for the jury, in-sample).

``--demo-seeds N``: the packaged demo pool's three lanes as the service runs them, for run seeds 0..N-1: the
service's own sampler (``ComparisonFamily.create`` as services/runs/shared_draws.py ``start_family`` calls it,
rng ``[seed, 0]``, α 0.05, margin 0.05, pool growth share kept), the crowd answer of every pair its one recorded
answer; labels only, recorded verdicts (supplied with the pairs, as in the demo), and the local jury with every
feature vote present from the first draw (in the demo they stream in over the first seconds, so its count there can
differ by a few labels). It prints each lane's distribution and the demo's default seed: the seed whose three
label counts are jointly closest to their medians (least sum of |count − median| / median; ties: smallest seed) —
a typical run, chosen on the lanes' counts alone.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from pathlib import Path

import numpy as np

from tiebreak.judges.defaults import DEFAULT_JURY
from tiebreak.judges.features import FeatureJudge
from tiebreak.sampler.engine import ComparisonConfig
from tiebreak.sampler.family import ComparisonFamily
from tiebreak.sampler.replay import ReplayPool, replay

ROOT = Path(__file__).resolve().parents[1]
Y = {"tuned": 1.0, "base": 0.0, "tie": 0.5}


def derive_module():
    spec = importlib.util.spec_from_file_location("demo_derive", ROOT / "services" / "demo_data" / "derive.py")
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(mod)
    return mod


def recorded_matrix(rows: list[dict]) -> np.ndarray:
    names = sorted({k for r in rows for k in r["recorded_judges"]})
    return np.array([[Y[r["recorded_judges"].get(k)] if r["recorded_judges"].get(k) else np.nan for k in names]
                     for r in rows])


def jury_matrix(rows: list[dict]) -> np.ndarray:
    jurors = [FeatureJudge(n.split(":", 1)[1]) for n in DEFAULT_JURY]
    return np.array([[j.p_tuned_more(r["prompt"] or "", r["base"] or "", r["tuned"] or "") for j in jurors]
                     for r in rows])


def limit_share(y: np.ndarray, x: np.ndarray, categorical: bool) -> float:
    """1 − R²: Var(y − ŷ) / Var(y), ŷ the cell mean of the item's vote pattern (categorical) or the least-squares
    fit on the votes with an intercept."""
    if categorical:
        cells = [tuple(row) for row in np.nan_to_num(x, nan=-1.0)]
        fit = np.zeros_like(y)
        for c in set(cells):
            idx = [i for i, k in enumerate(cells) if k == c]
            fit[idx] = y[idx].mean()
    else:
        a = np.column_stack([np.ones(len(y)), np.nan_to_num(x, nan=0.5)])
        fit = a @ np.linalg.lstsq(a, y, rcond=None)[0]
    return float(np.var(y - fit) / np.var(y))


def measure(rows: list[dict], runs: int, seed: int) -> list[dict]:
    y = np.array([np.mean([Y[v] for v in r["human_votes"]]) for r in rows])
    votes = tuple(np.array([Y[v] for v in r["human_votes"]]) for r in rows)
    out, ref = [], None
    for what, method, x, categorical in (("labels only", "classical", np.full((len(rows), 1), 0.5), False),
                                         ("recorded GPT-3.5 + PandaLM-7B", "active", recorded_matrix(rows), True),
                                         ("local jury (features)", "active", jury_matrix(rows), False)):
        t0 = time.perf_counter()
        s = replay(ReplayPool(votes, x), ComparisonConfig(method=method, alpha=0.05, margin=0.05, grid_resolution=20), runs, seed)
        labels = np.array([o.labels for o in s.outcomes])
        ref = labels if ref is None else ref
        out.append({"what": what, "method": method, "mean": float(labels.mean()),
                    "p10": float(np.percentile(labels, 10)), "p90": float(np.percentile(labels, 90)),
                    "ratio": float(labels.mean() / ref.mean()), "fewer": float(np.mean(labels < ref)),
                    "limit": None if method == "classical" else limit_share(y, x, categorical),
                    "decisions": s.counts(), "wrong": s.wrong(), "seconds": time.perf_counter() - t0})
    return out


def lane_labels(y: np.ndarray, votes: np.ndarray | None, seed: int) -> int:
    """Labels to the verdict of one demo lane with run seed ``seed``, by the service's sampler calls."""
    n = len(y)
    cfg = ComparisonConfig(alpha=0.05, margin=0.05, method="active" if votes is not None else "classical")
    fam = ComparisonFamily.create({"overall": votes}, cfg, rng=np.random.default_rng([seed, 0]),
                                  voted=None if votes is None else np.ones(n, dtype=bool), n_items=n,
                                  multiplicity="holm")
    while not fam.finished:
        items = fam.next_items(1)
        if not items:
            break
        fam.record_labels(items[0], {"overall": float(y[items[0]])})
    return len(fam.leader.labels)


def demo_seeds(rows: list[dict], seeds: int) -> None:
    y = np.array([np.mean([Y[v] for v in r["human_votes"]]) for r in rows])
    lanes = {"labels only": None, "recorded GPT-3.5 + PandaLM-7B": recorded_matrix(rows),
             "local jury (features)": jury_matrix(rows)}
    counts = {k: np.array([lane_labels(y, m, s) for s in range(seeds)]) for k, m in lanes.items()}
    ref = counts["labels only"]
    print(f"| lane ({len(rows)} pairs, run seeds 0-{seeds - 1}) | mean labels | median | 10-90 % | × labels only "
          "(means) | seeds with fewer / more labels than labels only |")
    print("|---|---|---|---|---|---|")
    for k, c in counts.items():
        vs = "—" if c is ref else f"{100 * np.mean(c < ref):.0f} % / {100 * np.mean(c > ref):.0f} %"
        print(f"| {k} | {c.mean():.1f} | {np.median(c):.0f} | {np.percentile(c, 10):.0f}-{np.percentile(c, 90):.0f} "
              f"| {c.mean() / ref.mean():.3f} | {vs} |")
    dist = sum(np.abs(c - np.median(c)) / np.median(c) for c in counts.values())
    typical = int(np.argmin(dist))
    print(json.dumps({"typical_seed": typical, **{k: int(c[typical]) for k, c in counts.items()},
                      "seeds": seeds}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pools", default="0.6:600:1,0.6:600:2,0.6:600:3",
                    help="comma-separated THETA:N:POOL_SEED fixed-theta PandaLM pools")
    ap.add_argument("--quick", action="store_true", help="10 runs per row")
    ap.add_argument("--demo-seeds", type=int, default=0,
                    help="instead: the packaged demo pool's three lanes for run seeds 0..N-1, and its typical seed")
    a = ap.parse_args()
    derive = derive_module()
    if a.demo_seeds:
        demo_seeds(derive.pandalm_rows(), a.demo_seeds)
        return
    runs = 10 if a.quick else a.runs
    print("| pool (θ, pairs, pool seed) | judges | mean labels | 10-90 % | × labels only | runs with fewer labels "
          "than labels only (same seed) | limit 1 − R² | decisions | wrong |")
    print("|---|---|---|---|---|---|---|---|---|")
    for spec in a.pools.split(","):
        theta, n, pool_seed = spec.split(":")
        rows = derive.pandalm_rows(float(theta), int(n), int(pool_seed))
        for r in measure(rows, runs, a.seed):
            lim = "—" if r["limit"] is None else f"{r['limit']:.3f}"
            fewer = "—" if r["method"] == "classical" else f"{100 * r['fewer']:.0f} %"
            dec = ", ".join(f"{k} {v}" for k, v in r["decisions"].items() if v)
            print(f"| {theta}, {n}, {pool_seed} | {r['what']} | {r['mean']:.1f} | {r['p10']:.0f}-{r['p90']:.0f} | "
                  f"{r['ratio']:.3f} | {fewer} | "
                  f"{lim} | {dec} | {r['wrong']} |", flush=True)
    print(json.dumps({"runs": runs, "seed": a.seed, "alpha": 0.05, "margin": 0.05}))


if __name__ == "__main__":
    main()
