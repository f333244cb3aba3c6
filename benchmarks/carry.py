"""Carried calibration on recorded data (issue 9): labels saved when a comparison starts from the judge calibration
learnt on *earlier runs* -- what POST /v1/runs ``calibration_from`` and an experiment's later checkpoints do.

Chatbot Arena (``../shared/data/chatbot_arena_ppr.jsonl``), the 47 model pairs with >= 200 battles, 20 replays
each (seeds as ``tiebreak replay --runs 20``), method ppi (active samples uniformly on Arena):

    classical     labels only (the reference of the ratios)
    none          online calibration only (the ``make bench`` row)
    other-pairs   prior fitted on *every* battle of the other model pairs with its mean vote (``tiebreak replay
                  --prior other-pairs``: the most a carried prior could know)
    earlier runs  prior fitted, as the service does (sampler.calibration.prior_calibration, the function behind
                  services/runs/prior.py), on what earlier runs actually labelled: one online ppi run on each
                  other model pair (all 190 pairs with a battle; the pair being replayed is never among them),
                  stopped at its verdict, each label one crowd vote drawn at random
    one earlier run   prior from the labels of one of those runs only: the run of another of the 47 pairs,
                  chosen at random per replayed pair (a re-run after a single earlier comparison)

    python -m benchmarks.carry [--runs R] [--json]

Each total comes with its Monte-Carlo standard error (at 20 replays per pair about 48 labels: more than the
differences between the rows, which is why the paired standard error against "none" -- same seeds -- is printed
too, and why docs/benchmarks.md quotes the 200-replay run).

Only the pair being replayed is ever left out of its prior, so every prior is a function of other pairs' data,
fixed before the replayed run's first draw (valid; docs/statistics.md, "Carried calibration").
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from benchmarks.engine import total_se
from tiebreak.sampler.calibration import JudgeCalibration, prior_calibration
from tiebreak.sampler.engine import Comparison, ComparisonConfig
from tiebreak.sampler.replay import ReplayPool, prior_from_pools, replay
from tiebreak.services.data import load_items, select_pools

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
if not (DATA / "chatbot_arena_ppr.jsonl").exists():
    import os
    DATA = Path(os.environ.get("TIEBREAK_DATA", "/work/shared/data"))


def earlier_run(pool: ReplayPool, config: ComparisonConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One online run (no prior) to its verdict; returns the judge votes and labels of the pairs it labelled,
    in pair order (what services/runs/prior.py reads from a finished run)."""
    cmp = Comparison(pool.judge_votes, config=config, rng=rng)
    while not cmp.finished:
        items = cmp.next_items(1)
        if not items:
            break
        votes = pool.votes[items[0]]
        cmp.record_label(items[0], float(votes[rng.integers(votes.size)]))
    idx = np.array(sorted(cmp.labels), dtype=int)
    return pool.judge_votes[idx], np.array([cmp.labels[i] for i in idx], dtype=float)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    items = load_items(DATA / "chatbot_arena_ppr.jsonl")
    arena = select_pools(items, all_pairs=True, min_items=200)
    everything = select_pools(items, all_pairs=True, min_items=1, judges=list(arena[0].judges))
    cfg = ComparisonConfig(method="ppi", grid_resolution=20)   # as `make bench` (replay closes the pool)
    earlier_cfg = replace(cfg, label_noise=True, pool_growth_alpha_share=0.0)

    # earlier runs: one per model pair, each an online run of its own (seeded apart from the replays)
    seeds = np.random.SeedSequence([a.seed, 7]).spawn(len(everything))
    labelled = {(op.base, op.tuned): earlier_run(op.pool, earlier_cfg, np.random.default_rng(s))
                for op, s in zip(everything, seeds, strict=True)}
    n_earlier = sum(len(y) for _, y in labelled.values())
    t_earlier = time.perf_counter() - t0

    def carried(op) -> JudgeCalibration:
        others = [v for k, v in labelled.items() if set(k) != {op.base, op.tuned}]
        groups = np.concatenate([np.full(len(y), j) for j, (_, y) in enumerate(others)])
        return prior_calibration(np.vstack([x for x, _ in others]), np.concatenate([y for _, y in others]),
                                 groups=groups)

    pick = np.random.default_rng([a.seed, 8])
    one_other = {(op.base, op.tuned): arena[int(pick.choice([j for j, o in enumerate(arena) if o is not op]))]
                 for op in arena}

    def carried_one(op) -> JudgeCalibration:
        o = one_other[(op.base, op.tuned)]
        x, y = labelled[(o.base, o.tuned)]
        return prior_calibration(x, y)

    rows: dict[str, dict] = {}
    per_run: dict[str, np.ndarray] = {}   # labels of every replay, pairs x runs: Monte-Carlo standard errors
    for name, prior_of in (("classical (labels only)", None),
                           ("none", lambda op: None),
                           ("other-pairs", lambda op: prior_from_pools(
                               [o.pool for o in everything if {o.base, o.tuned} != {op.base, op.tuned}])),
                           ("earlier runs", carried),
                           ("one earlier run", carried_one)):
        start = time.perf_counter()
        total, wrong, decided, prior_labels, labels = 0.0, 0, 0, [], []
        for op in arena:
            prior = prior_of(op) if prior_of is not None else None
            if prior is not None:
                prior_labels.append(prior.n_labels)
            s = replay(op.pool, cfg if prior_of is not None else replace(cfg, method="classical"), a.runs, a.seed,
                       prior=prior)
            labels.append(s.labels)
            total += float(s.labels.mean())
            wrong += s.wrong()
            c = s.counts()
            decided += c["better"] + c["worse"] + c["equivalent"]
        per_run[name] = np.asarray(labels, dtype=float)
        rows[name] = {"total_mean_labels": round(total, 1), "se": round(total_se(per_run[name]), 1),
                      "se_vs_none": round(total_se(per_run[name] - per_run["none"]), 1) if "none" in per_run else None,
                      "wrong": wrong, "decided": decided,
                      "runs": a.runs * len(arena),
                      "prior_labels_mean": round(float(np.mean(prior_labels)), 1) if prior_labels else 0,
                      "seconds": round(time.perf_counter() - start, 1)}
    base = rows["none"]["total_mean_labels"]
    classical = rows["classical (labels only)"]["total_mean_labels"]
    print(f"Chatbot Arena, {len(arena)} pairs >= 200 battles, ppi, {a.runs} runs each (seed {a.seed}); earlier runs: "
          f"{len(everything)} pairs, {n_earlier} labels in all ({t_earlier:.1f} s)")
    print("| prior | labels it is fitted on (mean per pair) | total mean labels ± SE | vs none (± paired SE) | "
          "vs classical | decided | wrong | s |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        paired = f" ± {r['se_vs_none']:.1f} labels" if r["se_vs_none"] and name != "none" else ""
        print(f"| {name} | {r['prior_labels_mean']:,.0f} | {r['total_mean_labels']:,.1f} ± {r['se']:.1f} | "
              f"{r['total_mean_labels'] / base:.3f}{paired} | {r['total_mean_labels'] / classical:.3f} | "
              f"{r['decided']}/{r['runs']} | {r['wrong']} | {r['seconds']} |")
    if a.json:
        print(json.dumps({"summary": True, "rows": rows, "earlier_labels": n_earlier}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
