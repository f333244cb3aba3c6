"""Plain workers and their thin Ray actor shell: ``GenerationWorker`` (one model generates outputs) and
``JudgeWorker`` (judges vote on pairs). Both are plain classes, testable without Ray; ``ray_actor`` wraps one
as a Ray actor class (the service's pipeline and ``judge_with_actors`` use it). Each actor holds its own model
copy; pairs are split across actors.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

from tiebreak.judges.cache import VoteCache
from tiebreak.judges.jury import JudgeVote
from tiebreak.judges.spec import judge_model, judge_name


class GenerationWorker:
    """One model; ``generate`` turns a batch of (prompt_id, text) into {prompt_id: output}."""

    def __init__(self, spec: dict, n_threads: int | None = None):
        from tiebreak.judges.backends import make_backend

        spec = dict(spec)
        if n_threads and spec.get("backend", "gguf") == "gguf":
            spec.setdefault("n_threads", n_threads)
        self.spec = spec
        self.backend = make_backend(spec)
        # a GGUF backend is shared per file within a process: the spec's prompt format goes with each call
        self.extra = {"prompt_format": spec["prompt_format"]} if spec.get("prompt_format") else {}

    def generate(self, batch: Sequence[tuple[str, str]], max_tokens: int = 256, temperature: float = 0.0
                 ) -> dict[str, str]:
        outs = self.backend.generate([t for _, t in batch], max_tokens=max_tokens, temperature=temperature,
                                     **self.extra)
        return {pid: o for (pid, _), o in zip(batch, outs, strict=True)}

    def close(self) -> None:
        """Release the backend's connections; GGUF backends are shared per process (judges.backends): kept."""
        close = getattr(self.backend, "close", None)
        if close is not None and self.spec.get("backend", "gguf") != "gguf":
            close()

    def pid(self) -> int:
        return os.getpid()


class JudgeWorker:
    """Judges (one spec or a list: ``PRESET[:MODE]``, a .gguf path, ``feature:NAME`` or a MODEL spec) over the
    given criteria. ``cache`` is a ``judges.cache.VoteCache`` or a zero-argument factory of one (called here,
    i.e. inside the actor's process: a Redis connection is not shipped between processes)."""

    def __init__(self, specs: Any, criteria: Sequence[str] = ("overall",),
                 cache: VoteCache | Callable[[], VoteCache | None] | None = None, n_threads: int | None = None):
        from tiebreak.judges.backends import make_backend
        from tiebreak.judges.features import FeatureJudge
        from tiebreak.judges.jury import CRITERIA, Judge

        self.criteria = list(criteria)
        crit = {c: CRITERIA.get(c, c.replace("_", " ")) for c in self.criteria}
        self.judges: list[Any] = []
        for spec in ([specs] if isinstance(specs, str | dict) else list(specs)):
            if isinstance(spec, str) and spec.startswith("feature:"):   # a free text-feature juror: no model
                self.judges.append(FeatureJudge(spec.removeprefix("feature:")))
                continue
            mspec, mode = judge_model(spec)
            if n_threads and mspec.get("backend", "gguf") == "gguf":
                mspec = {**mspec, "n_threads": n_threads}
            self.judges.append(Judge(make_backend(mspec), mode=mode, name=judge_name(spec), criteria=crit))
        self.cache = cache() if callable(cache) and not isinstance(cache, VoteCache) else cache

    @property
    def judge(self) -> Any:
        """The judge of a one-judge worker (the service's pipeline runs one actor per judge)."""
        return self.judges[0]

    def vote(self, batch: Sequence[tuple[int, str, str, str]]) -> dict[int, dict[str, float | None]]:
        """The one judge's P(tuned better) per pair index and criterion (None: no verdict)."""
        out: dict[int, dict[str, float | None]] = {}
        for idx, prompt, base, tuned in batch:
            row: dict[str, float | None] = {}
            for c in self.criteria:
                p = self.judge.vote(prompt, base, tuned, c, self.cache).p_tuned_better
                row[c] = None if math.isnan(p) else float(p)
            out[idx] = row
        return out

    def vote_costed(self, batch: Sequence[tuple[int, str, str, str]], clock: str = "thread"
                    ) -> tuple[dict[int, dict[str, float | None]], float]:
        """``vote`` and the CPU-seconds it took: ``clock="process"`` counts every thread of this process (a Ray
        actor is a process of its own, so that includes a model's worker threads); ``"thread"`` only the
        calling thread (in-process workers share the process with the service: a model's own threads are then
        not counted)."""
        read = time.process_time if clock == "process" else time.thread_time
        t0 = read()
        out = self.vote(batch)
        return out, max(0.0, read() - t0)

    def vote_batch(self, pairs: Sequence[tuple[str, str, str]]) -> list[list[dict[str, Any]]]:
        """Every judge's full vote (``JudgeVote.as_dict``) per (prompt, base, tuned), criteria outermost."""
        out = []
        for prompt, base, tuned in pairs:
            vs: list[JudgeVote] = [j.vote(prompt, base, tuned, c, self.cache) for c in self.criteria
                                   for j in self.judges]
            out.append([v.as_dict() for v in vs])
        return out

    def ready(self) -> bool:
        return True

    def pid(self) -> int:
        return os.getpid()


def ray_actor(cls: type, **options: Any) -> Any:
    """The Ray actor class wrapping a plain worker class (Ray imported lazily); ``options`` as for
    ``ray.remote`` (num_cpus, max_restarts, ...)."""
    import ray

    return ray.remote(**options)(cls)


def ray_judge_actor(num_cpus: float = 1.0) -> Any:
    """The Ray actor class wrapping ``JudgeWorker``."""
    return ray_actor(JudgeWorker, num_cpus=num_cpus)


def judge_with_actors(pairs: Sequence[tuple[str, str, str]], judge_names: Sequence[str], n_actors: int,
                      threads_per_actor: int = 1, batch: int = 1) -> tuple[list[list[dict[str, Any]]], float]:
    """Vote ``pairs`` with ``n_actors`` Ray actors (ray must be initialised). Returns (votes, seconds)
    where seconds excludes actor start-up (model load)."""
    import ray

    Actor = ray_judge_actor(num_cpus=threads_per_actor)
    actors = [Actor.remote(list(judge_names), n_threads=threads_per_actor) for _ in range(n_actors)]
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

    from tiebreak.judges.evaluate import load_items

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
