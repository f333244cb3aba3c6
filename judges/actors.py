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
