"""Scale-out: a thin Ray actor shell around ``JudgeWorker`` (a plain class, testable without Ray).

Each worker holds its own judges (one model copy per actor); pairs are split round-robin across actors.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

from judges.jury import Judge, JudgeVote


class JudgeWorker:
    """Builds judges from names (``MODEL[:MODE]``) and votes batches of (prompt, base, tuned) pairs."""

    def __init__(self, judge_names: Sequence[str], n_threads: int | None = None, criteria: Sequence[str] = ("overall",)):
        if n_threads:
            os.environ["TIEBREAK_THREADS"] = str(n_threads)
        from judges.jury import judges_from_names

        self.judges: list[Judge] = judges_from_names(judge_names)
        self.criteria = tuple(criteria)

    def vote_batch(self, pairs: Sequence[tuple[str, str, str]]) -> list[list[dict[str, Any]]]:
        out = []
        for prompt, base, tuned in pairs:
            vs: list[JudgeVote] = [j.vote(prompt, base, tuned, c) for c in self.criteria for j in self.judges]
            out.append([v.as_dict() for v in vs])
        return out

    def ready(self) -> bool:
        return True


def ray_judge_actor(num_cpus: float = 1.0):
    """The Ray actor class wrapping ``JudgeWorker`` (Ray imported lazily)."""
    import ray

    return ray.remote(num_cpus=num_cpus)(JudgeWorker)


def judge_with_actors(pairs: Sequence[tuple[str, str, str]], judge_names: Sequence[str], n_actors: int,
                      threads_per_actor: int = 1, batch: int = 1) -> tuple[list[list[dict[str, Any]]], float]:
    """Vote ``pairs`` with ``n_actors`` Ray actors (ray must be initialised). Returns (votes, seconds)
    where seconds excludes actor start-up (model load)."""
    import ray

    Actor = ray_judge_actor(num_cpus=threads_per_actor)
    actors = [Actor.remote(list(judge_names), threads_per_actor) for _ in range(n_actors)]
    ray.get([a.ready.remote() for a in actors])
    chunks = [list(pairs[i:i + batch]) for i in range(0, len(pairs), batch)]
    t0 = time.perf_counter()
    refs = [actors[k % n_actors].vote_batch.remote(c) for k, c in enumerate(chunks)]
    res = [v for r in ray.get(refs) for v in r]
    dt = time.perf_counter() - t0
    for a in actors:
        ray.kill(a)
    return res, dt


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m judges.actors --data PATH --pairs 12 --actors 1,2 --judges qwen2.5-coder-0.5b``:
    judging throughput (pairs/s, model load excluded) vs number of Ray actors on this machine."""
    import argparse
    import json

    import ray

    from judges.evaluate import load_items

    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="../shared/data/pandalm_testset.jsonl")
    ap.add_argument("--pairs", type=int, default=12)
    ap.add_argument("--actors", default="1,2")
    ap.add_argument("--judges", default="qwen2.5-coder-0.5b")
    ap.add_argument("--cpus", type=int, default=os.cpu_count() or 2)
    a = ap.parse_args(argv)
    items = load_items(a.data, a.pairs, seed=1)
    pairs = [(it["question"], it["response_a"], it["response_b"]) for it in items]
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=a.cpus, include_dashboard=False, log_to_driver=False)
    try:
        for n in [int(x) for x in a.actors.split(",")]:
            threads = max(1, a.cpus // n)
            _, dt = judge_with_actors(pairs, a.judges.split(","), n, threads_per_actor=threads)
            print(json.dumps({"actors": n, "threads_per_actor": threads, "pairs": len(pairs),
                              "seconds": round(dt, 2), "pairs_per_s": round(len(pairs) / dt, 3)}), flush=True)
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
