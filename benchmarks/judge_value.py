"""Online judge value vs the full-pool value on recorded judge votes (issue 10 item 3).

``python -m benchmarks.judge_value``: for each recorded judge on PandaLM (whole file, one pool) and on the
Arena model pairs with >= 300 battles, the value (share of label variance its calibrated votes explain,
sampler/judge_value.py) on the whole pool, then the online estimate on n random labelled pairs
(n = 30, 100, 300; ``--reps`` subsamples each): mean estimate and how often the 90 % interval contains the
full-pool value. The full-pool value is the cross-fitted R^2 on every pair (the best stand-in for the truth).
``--simulate``: the interval's coverage of a known population value on simulated 3-valued labels.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tiebreak.sampler.judge_value import judge_value
from tiebreak.services.data import OrientedPool, load_items, select_pools

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


def simulated_pairs(rng: np.random.Generator, n: int, signal: float) -> tuple[np.ndarray, np.ndarray]:
    """3-valued labels from a latent quality z; the vote is a noisy sigmoid of z (signal 0: none). Also used by
    tests/unit/test_judge_value.py."""
    z = rng.standard_normal(n)
    u = z + rng.standard_normal(n)
    y = np.where(u > 0.6, 1.0, np.where(u < -0.6, 0.0, 0.5))
    x = 1.0 / (1.0 + np.exp(-(signal * z + rng.standard_normal(n))))
    return x, y


def simulate(reps: int, sizes: list[int], rng: np.random.Generator) -> None:
    """Coverage of the 90 % interval for the known population R^2 (from 2 x 10^6 draws)."""
    for signal in (0.0, 0.5, 1.5):
        x, y = simulated_pairs(rng, 2_000_000, signal)
        rho2 = float(np.corrcoef(x, y)[0, 1] ** 2)
        for n in sizes:
            vals = [judge_value(*simulated_pairs(rng, n, signal)) for _ in range(reps)]
            print(json.dumps({"rho2": round(rho2, 4), "n": n, "runs": reps,
                              "covers": round(float(np.mean([v.lower <= rho2 <= v.upper for v in vals])), 3),
                              "upper_covers": round(float(np.mean([rho2 <= v.upper for v in vals])), 3),
                              "mean_r2": round(float(np.mean([v.r2 for v in vals])), 4)}), flush=True)


def stop_times(reps: int, rng: np.random.Generator, threshold: float = 0.05, min_pairs: int = 30) -> None:
    """When the auto budget's rule (services/runs/judge_budget.py) stops a judge, checked every 4 labelled pairs
    as the pipeline's batches do: share of runs stopped by 100 / 200 / 400 / 1,000 labelled pairs."""
    from tiebreak.sampler.judge_value import worthless

    for signal in (0.0, 0.3, 0.5, 1.5):
        x, y = simulated_pairs(rng, 2_000_000, signal)
        rho2 = float(np.corrcoef(x, y)[0, 1] ** 2)
        at = []
        for _ in range(reps):
            x, y = simulated_pairs(rng, 1000, signal)
            at.append(next((n for n in range(min_pairs, 1001, 4)
                            if worthless(judge_value(x[:n], y[:n]), threshold, min_pairs)), 10**9))
        a = np.array(at)
        print(json.dumps({"rho2": round(rho2, 4), "runs": reps,
                          **{f"stopped_by_{k}": round(float((a <= k).mean()), 3) for k in (100, 200, 400, 1000)},
                          "median_stop": float(np.median(a)) if (a < 10**9).mean() > 0.5 else None}), flush=True)


def simulated_pool(n: int, signal: float, shift: float, seed: int):
    """A pool of ``n`` simulated pairs as ``simulated_pairs`` with the latent answer quality shifted by ``shift``
    (shift 0.2: theta ~ 0.55, a run of a few hundred labels); the judge's vote as there (signal 0.5: rho^2 ~ 0.08,
    like GPT-4 on Arena; 0: none)."""
    from tiebreak.sampler.replay import ReplayPool

    rng = np.random.default_rng((seed, 99))
    z = rng.standard_normal(n)
    u = z + rng.standard_normal(n) + shift
    y = np.where(u > 0.6, 1.0, np.where(u < -0.6, 0.0, 0.5))
    x = 1.0 / (1.0 + np.exp(-(signal * z + rng.standard_normal(n))))
    return ReplayPool(tuple(np.array([v]) for v in y), x[:, None])


class _SimulatedPool:
    def __init__(self, pool):
        self.pool = pool


def simulated_run(pool, rate: float, policy: str, seed: tuple[int, ...], lead: tuple[int, float] | None = None,
                  release: float | None = None, release_level: float | None = None,
                  trial: tuple[int, float, float] | None = None) -> tuple[float, int, str]:
    """One run on a recorded pool with one recorded judge that votes ``rate`` pairs per human label (labelled
    pairs first, then a random order, as services/pipeline.py); the run stops at its verdict (method active).
    ``policy``: "all" (the judge is never stopped: today's default), "auto" (the stop rule only) or "lead" (the
    stop rule and pay as you go: judge_budget.allowance caps the pairs voted until the judge has shown value; a
    judge at its cap idles, and the rest of that label's voting time is lost). Returns (share of the pool voted,
    labels to the verdict, how judging ended: "decided" / "worthless" / "all voted"). ``lead`` = (start, per
    label) instead of the service's LEAD_START, LEAD_PER_LABEL; ``release``: the lower end above which the judge
    has shown value, instead of RELEASE, and ``release_level`` the interval's level instead of RELEASE_LEVEL;
    ``trial`` = (minimum, share, level) instead of the service's TRIAL_MIN, TRIAL_SHARE, TRIAL_LEVEL (policy
    "lead" only; level 0 turns the trial off)."""
    from tiebreak.sampler.engine import Comparison, ComparisonConfig
    from tiebreak.sampler.judge_value import worthless
    from tiebreak.services.runs.judge_budget import (
        LEAD_PER_LABEL,
        LEAD_START,
        MIN_PAIRS,
        RELEASE,
        RELEASE_LEVEL,
        THRESHOLD,
        TRIAL_LEVEL,
        TRIAL_MIN,
        TRIAL_SHARE,
        allowance,
    )
    from tiebreak.services.runs.judge_budget import (
        trial as judge_trial,
    )

    start, per_label = lead or (LEAD_START, LEAD_PER_LABEL)
    t_min, t_share, t_level = trial or (TRIAL_MIN, TRIAL_SHARE, TRIAL_LEVEL)
    n = len(pool.votes)
    rng = np.random.default_rng(seed)
    c = Comparison(np.full_like(pool.judge_votes, np.nan), config=ComparisonConfig(method="active"), rng=rng,
                   voted=np.zeros(n, dtype=bool))
    order = [int(i) for i in np.random.default_rng((*seed, 7)).permutation(n)]
    voted: set[int] = set()
    pos, credit, stopped, end = 0, rate, False, "all voted"

    def value(labelled: list[int]):
        ys = np.array([c.labels[i] for i in labelled])
        return judge_value(c.votes_received()[labelled, 0], ys)

    while not c.finished:
        labelled = list(dict.fromkeys(d.item for d in c.draws[: c.processed]))   # processed, first draw counts
        cap = None
        if policy == "lead":
            tr = (judge_trial(np.array([c.labels[i] for i in labelled]), c.votes_received()[labelled, 0], n, t_min,
                        t_share, t_level, release_level or RELEASE_LEVEL) if labelled else None)
            if tr is not None and tr.failed and t_level > 0 and not stopped:
                stopped, end = True, "worthless"
            cap = allowance(tr.shown if tr else None, len(labelled), start, per_label,
                            RELEASE if release is None else release)
        todo = [i for i in labelled if i not in voted]
        while credit >= 1 and not stopped and len(voted) < n:
            if cap is not None and len(voted) >= cap:
                credit -= math.floor(credit)          # waiting for labels: this label's time is not banked
                break
            if todo:
                i = todo.pop(0)
            else:
                while order[pos] in voted:
                    pos += 1
                i = order[pos]
            voted.add(i)
            c.add_votes([i], pool.judge_votes[[i]])
            credit -= 1
        if policy != "all" and not stopped and labelled and worthless(value(labelled), THRESHOLD, MIN_PAIRS):
            stopped, end = True, "worthless"
        items_ = c.next_items(1)
        if not items_:
            break
        v = pool.votes[items_[0]]
        c.record_label(items_[0], float(v[rng.integers(v.size)]) if v.size > 1 else float(v[0]))
        credit += rate
    if not stopped and len(voted) < n:
        end = "decided"
    return len(voted) / n, len(c.labels), end


def cpu_share(runs: int, rates: list[float], judge: str, seed: int, data: str = "arena",
              lead: tuple[int, float] | None = None, policies: tuple[str, ...] = ("lead", "auto"),
              release: float | None = None, release_level: float | None = None,
              trial: tuple[int, float, float] | None = None, pool_size: int = 2000) -> None:
    """What share of today's judging a judge costs under judge_budget "auto", with and without pay as you go, on
    recorded pools with one recorded judge: the Arena model pairs with >= 300 battles, or PandaLM (one pool).
    Judging ends when the run is decided (stopped-decided), the judge is worthless (stopped-worthless) or every
    pair is voted; today ("all") the judge votes every pair. Prints per rate and policy (simulated_run): mean
    share of the pool voted, how judging ended, and labels to the verdict against the same runs (same seeds)
    with the judge never stopped, with the mean paired difference and its standard error."""
    pools: Sequence[OrientedPool | _SimulatedPool]
    if data.startswith("sim:"):
        # a fresh pool per run: one small pool's chance vote-label correlation (~1/sqrt(N)) is not "no signal"
        pools = [_SimulatedPool(simulated_pool(pool_size, float(data[4:]), 0.2, 1000 * seed + r)) for r in range(runs)]
        runs = 1
    elif data == "arena":
        pools = select_pools(load_items(DATA / "chatbot_arena_ppr.jsonl"), all_pairs=True, min_items=300,
                             judges=[judge])
    else:
        pools = select_pools(load_items(DATA / "pandalm_testset.jsonl"), judges=[judge])
    for rate in rates:
        got: dict[str, list[tuple[float, int, str]]] = {p: [] for p in (*policies, "all")}
        for k, op in enumerate(pools):
            for r in range(runs):
                for policy in got:
                    got[policy].append(simulated_run(op.pool, rate, policy, (seed, k, r), lead, release,
                                                     release_level, trial))
        base = np.array([lab for _, lab, _ in got["all"]], dtype=float)
        for policy in policies:
            share = np.array([s for s, _, _ in got[policy]])
            lab = np.array([lab for _, lab, _ in got[policy]], dtype=float)
            ends = {e: sum(1 for *_, x in got[policy] if x == e) for e in ("decided", "worthless", "all voted")}
            diff = lab - base
            print(json.dumps({"data": data, "judge": judge, "rate_pairs_per_label": rate, "policy": policy,
                              **({"lead": list(lead)} if lead and policy == "lead" else {}),
                              **({"release": release} if release is not None and policy == "lead" else {}),
                              **({"release_level": release_level} if release_level and policy == "lead" else {}),
                              **({"trial": list(trial)} if trial and policy == "lead" else {}),
                              "pools": len(pools), "pool_sizes": [len(op.pool.votes) for op in pools],
                              "runs": len(share), "mean_share_of_pool_voted": round(float(share.mean()), 3),
                              "max_share": round(float(share.max()), 3), "ended": ends,
                              "labels": round(float(lab.mean()), 1),
                              "labels_never_stopped": round(float(base.mean()), 1),
                              "extra_labels_pct": round(100 * float(diff.mean() / base.mean()), 2),
                              "extra_labels_pct_se": round(100 * float(diff.std(ddof=1) / np.sqrt(diff.size)
                                                                      / base.mean()), 2) if diff.size > 1 else None}),
                  flush=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--sizes", default="30,100,300")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--simulate", action="store_true", help="coverage on simulated data of known value instead")
    ap.add_argument("--stops", action="store_true", help="when the auto budget stops judges of known value")
    ap.add_argument("--cpu-share", default=None, metavar="JUDGE",
                    help="share of the pool a recorded Arena judge votes under the auto budget")
    ap.add_argument("--rates", default="1,0.2", help="--cpu-share: judge pairs per human label")
    ap.add_argument("--lead", default=None, metavar="START,PER_LABEL",
                    help="--cpu-share: pay as you go's lead instead of the service's LEAD_START, LEAD_PER_LABEL")
    ap.add_argument("--release", type=float, default=None,
                    help="--cpu-share: the lower end that releases a judge instead of the service's RELEASE")
    ap.add_argument("--release-level", type=float, default=None,
                    help="--cpu-share: that interval's level instead of the service's RELEASE_LEVEL")
    ap.add_argument("--trial", default=None, metavar="MIN,SHARE,LEVEL",
                    help="--cpu-share: the trial's TRIAL_MIN, TRIAL_SHARE, TRIAL_LEVEL instead of the service's "
                         "(level 0: no trial)")
    ap.add_argument("--pool-size", type=int, default=2000, help="--cpu-share with --data sim:SIGNAL: pairs")
    ap.add_argument("--policies", default="lead,auto", help="--cpu-share: lead, auto (each against all)")
    ap.add_argument("--data", default="arena",
                    help="--cpu-share: arena or pandalm (recorded pools), or sim:SIGNAL (2,000 simulated pairs, "
                         "theta ~ 0.55; the judge name is then only a label)")
    a = ap.parse_args(argv)
    rng = np.random.default_rng(a.seed)
    sizes = [int(s) for s in a.sizes.split(",")]
    if a.simulate:
        simulate(a.reps, sizes, rng)
        return
    if a.stops:
        stop_times(a.reps, rng)
        return
    if a.cpu_share:
        lead = (int(a.lead.split(",")[0]), float(a.lead.split(",")[1])) if a.lead else None
        trial = None
        if a.trial:
            t = a.trial.split(",")
            trial = (int(t[0]), float(t[1]), float(t[2]))
        cpu_share(a.reps, [float(r) for r in a.rates.split(",")], a.cpu_share, a.seed, a.data, lead,
                  tuple(a.policies.split(",")), a.release, a.release_level, trial, a.pool_size)
        return
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
