"""Online judge value vs the full-pool value on recorded judge votes (issue 10 item 3).

``python -m benchmarks.judge_value``: for each recorded judge on PandaLM (whole file, one pool) and on the
Arena model pairs with >= 300 battles, the value (share of label variance its calibrated votes explain,
sampler/judge_value.py) on the whole pool, then the online estimate on n random labelled pairs
(n = 30, 100, 300; ``--reps`` subsamples each): mean estimate and how often the 90 % interval contains the
full-pool value. The full-pool value is the cross-fitted R^2 on every pair (the best stand-in for the truth).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from sampler.judge_value import judge_value
from services.data import load_items, select_pools

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def pools(name: str) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(label, labels y = mean human vote, votes of one judge) per (pool, judge)."""
    items = load_items(DATA / name)
    if name.startswith("pandalm"):
        selected = select_pools(items)
    else:
        selected = select_pools(items, all_pairs=True, min_items=300)
    out = []
    for op in selected:
        y = np.array([float(np.mean(v)) for v in op.pool.votes])
        for j, judge in enumerate(op.judges):
            x = op.pool.judge_votes[:, j]
            keep = ~np.isnan(x)
            out.append((f"{name.split('_')[0]} {op.base} vs {op.tuned} / {judge}", y[keep], x[keep]))
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--sizes", default="30,100,300")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    rng = np.random.default_rng(a.seed)
    sizes = [int(s) for s in a.sizes.split(",")]
    for data in ("pandalm_testset.jsonl", "chatbot_arena_ppr.jsonl"):
        for label, y, x in pools(data):
            full = judge_value(x, y)
            row: dict = {"pool": label, "pairs": int(y.size), "full_r2": round(full.r2, 4),
                         "full_interval": [round(full.lower, 4), round(full.upper, 4)]}
            for n in sizes:
                if n > y.size // 2:
                    continue
                est, cover = [], 0
                for _ in range(a.reps):
                    idx = rng.choice(y.size, n, replace=False)
                    v = judge_value(x[idx], y[idx])
                    est.append(v.r2)
                    cover += v.lower <= full.r2 <= v.upper
                row[f"n{n}"] = {"mean_r2": round(float(np.mean(est)), 4), "covers_full": round(cover / a.reps, 3)}
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
