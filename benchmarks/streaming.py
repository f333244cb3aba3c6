"""Labels to a decision when judge votes stream in during labelling (issue 10) against waiting for every vote.

    python -m benchmarks.streaming [--runs R] [--rate K ...]

Replays the Chatbot Arena pools (47 model pairs with >= 200 battles) and the PandaLM pools (10 model pairs) with
method active, as `make bench` does (sampler.replay: closed pools, one simulated annotator). Streaming: the judges
work through the pool in a random order at K pairs per human label (the votes of the first K pairs are there when
labelling starts), and each comparison receives them through ``Comparison.add_votes`` (used from its next refit).
Wait-for-all is the same run with every vote present from the start (same seeds). Prints one JSON line per
(data set, K): mean labels per run over all pools and runs, and the ratio streaming / wait-for-all.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from tiebreak.sampler.engine import Comparison, ComparisonConfig
from tiebreak.sampler.replay import ReplayPool
from tiebreak.services.data import load_items, select_pools

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def run_once(pool: ReplayPool, cfg: ComparisonConfig, seed: tuple[int, int], rate: float | None) -> int:
    """Labels used by one run; rate None: every vote from the start (wait-for-all)."""
    rng = np.random.default_rng(seed)              # the sampler's and the annotator's, as in replay_once
    n = len(pool.votes)
    if rate is None:
        c = Comparison(pool.judge_votes, config=cfg, rng=rng)
    else:
        c = Comparison(np.full_like(pool.judge_votes, np.nan), config=cfg, rng=rng, voted=np.zeros(n, dtype=bool))
        order = np.random.default_rng((*seed, 7)).permutation(n)   # the judges' order: independent of the labels
        sent = 0
    while not c.finished:
        if rate is not None and sent < n:
            due = min(n, int(rate * (len(c.labels) + 1)))
            if due > sent:
                c.add_votes(order[sent:due], pool.judge_votes[order[sent:due]])
                sent = due
        items = c.next_items(1)
        if not items:
            break
        v = pool.votes[items[0]]
        c.record_label(items[0], float(v[rng.integers(v.size)]) if v.size > 1 else float(v[0]))
    return len(c.labels)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--rate", type=float, nargs="+", default=[10.0, 1.0])
    a = ap.parse_args()
    sets = {"arena": select_pools(load_items(DATA / "chatbot_arena_ppr.jsonl"), all_pairs=True, min_items=200),
            "pandalm": select_pools(load_items(DATA / "pandalm_testset.jsonl"), all_pairs=True, min_items=1)}
    for name, pools in sets.items():
        base_cfg = ComparisonConfig(method="active", grid_resolution=20, pool_growth_alpha_share=0.0)
        waited = []
        t0 = time.perf_counter()
        for k, op in enumerate(pools):
            cfg = replace(base_cfg, label_noise=op.pool.noisy)
            waited += [run_once(op.pool, cfg, (k, r), None) for r in range(a.runs)]
        for rate in a.rate:
            streamed = []
            for k, op in enumerate(pools):
                cfg = replace(base_cfg, label_noise=op.pool.noisy)
                streamed += [run_once(op.pool, cfg, (k, r), rate) for r in range(a.runs)]
            print(json.dumps({"data": name, "pools": len(pools), "runs_per_pool": a.runs,
                              "pairs_judged_per_label": rate, "labels_wait_for_all": round(float(np.mean(waited)), 1),
                              "labels_streaming": round(float(np.mean(streamed)), 1),
                              "ratio": round(float(np.mean(streamed) / np.mean(waited)), 3),
                              "seconds": round(time.perf_counter() - t0, 1)}), flush=True)


if __name__ == "__main__":
    main()
