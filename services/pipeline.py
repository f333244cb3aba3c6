"""Generation and judging pipeline: plain worker classes, thin Ray actor shells, and the orchestrator.

    GenerationWorker(spec)              one model (backend from judges.backends); generate(batch) -> outputs
    JudgeWorker(spec, criteria, cache)  one judge (judges.jury.Judge) with the Redis vote cache; vote(batch)

Both are plain classes in judges/actors.py (unit-testable without Ray). ``Pipeline`` runs them as Ray actors
(one per model, one per judge; ``max_restarts=-1, max_task_retries=-1``: a crashed actor is restarted and its unfinished batch
re-run) or, with ``mode="local"``, in-process. Finished work is stored per batch — generated outputs in
``tb:run:{rid}:outputs``, votes through ``RunService.add_votes`` — and every judge call goes through the Redis
vote cache, so a retry (or a restart of the whole service) never redoes stored work.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any

import numpy as np

from tiebreak.judges.actors import GenerationWorker, JudgeWorker, ray_actor
from tiebreak.judges.spec import judge_name, judge_problem

if TYPE_CHECKING:
    from tiebreak.services.store import RedisVoteCache

__all__ = ["SIDES", "GenerationWorker", "JudgeWorker", "Pipeline", "generate_in_process", "judge_name",
           "redis_vote_cache", "validate_judge_spec"]

log = logging.getLogger(__name__)

SIDES = ("base", "tuned")


# judge specs: one parser, judges/spec.py (re-exported here for the modules that import them from the pipeline)
validate_judge_spec = judge_problem


# ------------------------------------------------------------------------------------- plain workers
# GenerationWorker and JudgeWorker live in judges/actors.py (plain classes; re-exported here)


def redis_vote_cache(url: str) -> RedisVoteCache | None:
    """The judges' Redis vote cache at ``url``, or None when Redis cannot be reached (the cache is an
    optimisation: judge without it). Passed to JudgeWorker as a factory so the actor connects itself."""
    from tiebreak.services.store import RedisVoteCache

    try:
        cache = RedisVoteCache.from_url(url)
        cache.r.ping()
        return cache
    except Exception as e:  # noqa: BLE001 - any connection problem: judge without the cache
        log.warning("vote cache at %s unavailable (%s); judging without it", url, e)
        return None


# ------------------------------------------------------------------------------------- orchestration
class _LocalHandle:
    """Calls a plain worker in-process with the same `.method.remote(...)` shape as a Ray actor."""

    def __init__(self, obj: Any):
        self.obj = obj

    def call(self, method: str, *args: Any, **kw: Any) -> Any:
        return getattr(self.obj, method)(*args, **kw)


class Pipeline:
    """Runs generation and judging for runs in background threads; one thread per run at a time.

    ``mode``: "ray" (actors; ``ray_address`` None = a local ``ray.init()``, else a cluster address) or
    "local" (in-process workers, no Ray)."""

    def __init__(self, service: Any, mode: str = "ray", ray_address: str | None = None, batch_size: int = 4,
                 num_cpus_per_actor: float = 1.0, n_threads: int | None = None, metrics: Any = None,
                 max_concurrent: int = 2):
        if mode not in ("ray", "local"):
            raise ValueError("pipeline mode must be 'ray' or 'local'")
        self.service = service
        self.mode = mode
        self.ray_address = ray_address
        self.batch_size = max(1, batch_size)
        self.num_cpus = num_cpus_per_actor
        self.n_threads = n_threads
        self.metrics = metrics
        self._threads: dict[str, threading.Thread] = {}
        self._lock = threading.Lock()
        # at most max_concurrent runs generate/judge at once (each starts up to 2 + judges actors, which load
        # models): the others wait their turn in status generating/judging
        self.max_concurrent = max(1, max_concurrent)
        self.wait_s = 0.2   # a judge held back by the auto budget looks for new labels this often
        self._slots = threading.BoundedSemaphore(self.max_concurrent)
        self.running: set[str] = set()
        self.actors: dict[str, Any] = {}   # "{rid}:gen:base" / "{rid}:judge:NAME" -> actor handle

    # ------------------------------------------------------------------ lifecycle
    def submit(self, rid: str) -> threading.Thread:
        with self._lock:
            t = self._threads.get(rid)
            if t is not None and t.is_alive():
                return t
            t = threading.Thread(target=self._run_safe, args=(rid,), name=f"pipeline-{rid}", daemon=True)
            self._threads[rid] = t
            t.start()
            return t

    def wait(self, rid: str, timeout: float | None = None) -> None:
        t = self._threads.get(rid)
        if t is not None:
            t.join(timeout)

    def resume_all(self) -> None:
        """After a restart: continue every run whose generation or judging had not finished."""
        for r in self.service.list_runs():
            if r["status"] in ("generating", "judging"):
                self.submit(r["run_id"])

    def _run_safe(self, rid: str) -> None:
        from tiebreak.services.runs import NotOwner, OwnershipLost

        try:
            self.run(rid)
        except (NotOwner, OwnershipLost) as e:   # another replica owns the run now: its pipeline goes on
            log.info("pipeline of run %s stops here: %s", rid, e)
        except Exception as e:  # a failed pipeline marks the run failed, with the reason
            log.exception("pipeline of run %s failed", rid)
            self.service.set_status(rid, "failed", error=f"{type(e).__name__}: {e}")

    def _ensure_ray(self) -> Any:
        import ray

        if not ray.is_initialized():
            if self.ray_address:
                ray.init(address=self.ray_address, include_dashboard=False, ignore_reinit_error=True)
            else:
                ray.init(include_dashboard=False, ignore_reinit_error=True)
        return ray

    def _actor(self, key: str, cls: type, *args: Any, num_cpus: float | None = None) -> Any:
        if self.mode == "local":
            h = _LocalHandle(cls(*args))
        else:
            self._ensure_ray()
            ncpu = self.num_cpus if num_cpus is None else num_cpus
            remote = ray_actor(cls, num_cpus=ncpu, max_restarts=-1, max_task_retries=-1)
            h = remote.remote(*args)
        self.actors[key] = h
        return h

    def _map(self, handle: Any, method: str, batches: list, on_result: Any, **kw: Any) -> None:
        """Run method over batches on one actor; on_result(batch, result) as each finishes (stored at once)."""
        if self.mode == "local":
            for b in batches:
                on_result(b, handle.call(method, b, **kw))
            return
        ray = self._ensure_ray()
        refs = {getattr(handle, method).remote(b, **kw): b for b in batches}
        while refs:
            done, _ = ray.wait(list(refs), num_returns=1)
            for ref in done:
                b = refs.pop(ref)
                on_result(b, ray.get(ref))

    def _kill(self, key: str) -> None:
        h = self.actors.pop(key, None)
        if h is not None and self.mode == "ray":
            import ray

            ray.kill(h)
        elif h is not None and hasattr(h.obj, "close"):
            h.obj.close()

    # ------------------------------------------------------------------ outputs for experiments
    def generate_outputs(self, spec: dict, prompts: list[dict]) -> dict[str, str]:
        """One model's outputs for ``prompts`` [{id, text}] -> {id: output}, through the same GenerationWorker
        actor as a run's generation (an experiment's base and checkpoints use it). ``spec`` may carry
        ``max_tokens`` / ``temperature``. Blocks; takes one of the ``max_concurrent`` slots while it runs."""
        key = f"gen:{uuid.uuid4().hex[:12]}"
        todo = [(str(p["id"]), p["text"]) for p in prompts]
        batches = [todo[i:i + self.batch_size] for i in range(0, len(todo), self.batch_size)]
        out: dict[str, str] = {}
        with self._slots:
            try:
                h = self._actor(key, GenerationWorker, spec, self.n_threads)
                self._map(h, "generate", batches, lambda _b, res: out.update(res),
                          max_tokens=int(spec.get("max_tokens", 256)),
                          temperature=float(spec.get("temperature", 0.0)))
            finally:
                self._kill(key)
        if self.metrics:
            self.metrics.generated.inc(len(out))
        return {pid: out[pid] for pid, _ in todo}

    # ------------------------------------------------------------------ the work
    def run(self, rid: str) -> None:
        with self._slots:
            self.running.add(rid)
            try:
                self._work(rid)
            finally:
                self.running.discard(rid)

    def _work(self, rid: str) -> None:
        svc = self.service
        meta = svc.run_meta(rid)      # a copy, taken under the run's lock
        if meta.get("generate") and meta["status"] == "generating":
            self._generate(rid, meta)
        meta = svc.run_meta(rid)
        if meta["judges"] and meta["status"] == "judging":
            self._judge(rid, meta)

    def _generate(self, rid: str, meta: dict) -> None:
        if not meta.get("generate_streams"):
            self._generate_then_add(rid, meta)     # a run stored before generate runs streamed
            return
        self._generate_streaming(rid, meta)

    def _generate_streaming(self, rid: str, meta: dict) -> None:
        """Both models' outputs for a streaming generate run, one actor per model, each pair's outputs handed
        to the run (``outputs_ready``) the moment both exist. Order: the pairs the sampler drew and is waiting
        for first (``generation_wanted``, asked before every batch), then a random order (the run's seed).

        Validity does not rest on this order (the draws never depend on what is generated): it only decides
        how long a human waits. Votes come later (judging starts when every output exists), and the sampler
        uses a vote only to predict draws made after it arrived (sampler.engine ``add_votes``), so the
        priority given to drawn pairs cannot leak into the estimate (docs/statistics.md, "Generate runs
        stream"). A GGUF model generates one prompt per call (it runs them one by one anyway), so a drawn pair
        waits for at most one other prompt per model; remote backends get ``batch_size`` prompts per call."""
        svc, store = self.service, self.service.store
        gen = meta["generate"]
        text = {str(p["id"]): p["text"] for p in gen["prompts"]}
        ids = list(text)
        have = store.all_outputs(rid)
        lock = threading.Lock()
        rng = np.random.default_rng([int(meta.get("seed") or 0), 0x67656E])
        order = [ids[k] for k in rng.permutation(len(ids))]

        def complete(pid: str) -> tuple[str, str] | None:
            b, t = have.get(f"base:{pid}"), have.get(f"tuned:{pid}")
            return (b, t) if b is not None and t is not None else None

        # outputs made before a restart: hand over the complete pairs (the run ignores those it has)
        done0 = {pid: both for pid in ids if (both := complete(pid)) is not None}
        left = svc.outputs_ready(rid, done0, made=len(have))
        kw = {"max_tokens": gen.get("max_tokens", 256), "temperature": gen.get("temperature", 0.0)}
        errors: list[BaseException] = []

        def side_loop(side: str, handle: Any, per_call: int) -> None:
            cursor = 0
            try:
                while not errors:
                    if svc.run_finished(rid):    # every verdict is final: nobody will label another pair
                        return
                    wanted = [pid for pid in svc.generation_wanted(rid) if f"{side}:{pid}" not in have]
                    batch = wanted[:per_call]      # a drawn pair goes alone: its human is waiting
                    while not wanted and len(batch) < per_call and cursor < len(order):
                        pid = order[cursor]
                        cursor += 1
                        if f"{side}:{pid}" not in have:
                            batch.append(pid)
                    if not batch:
                        return
                    rows = [(pid, text[pid]) for pid in batch]
                    if self.mode == "local":
                        result = handle.call("generate", rows, **kw)
                    else:
                        ray = self._ensure_ray()
                        result = ray.get(handle.generate.remote(rows, **kw))
                    store.set_outputs(rid, {f"{side}:{pid}": out for pid, out in result.items()})
                    with lock:
                        have.update({f"{side}:{pid}": out for pid, out in result.items()})
                        done = {pid: both for pid in result if (both := complete(pid)) is not None}
                        made = len(have)
                    svc.outputs_ready(rid, done, made=made)
                    if self.metrics:
                        self.metrics.generated.inc(len(result))
            except BaseException as e:  # noqa: BLE001 - reported by the pipeline thread (run failed)
                errors.append(e)

        threads = []
        if left:
            for side in SIDES:
                spec = gen[side]
                per_call = 1 if (not isinstance(spec, dict) or spec.get("backend", "gguf") == "gguf") \
                    else self.batch_size
                h = self._actor(f"{rid}:gen:{side}", GenerationWorker, spec, self.n_threads)
                t = threading.Thread(target=side_loop, args=(side, h, per_call), name=f"gen-{rid}-{side}",
                                     daemon=True)
                t.start()
                threads.append(t)
        for t in threads:
            t.join()
        for side in SIDES:
            self._kill(f"{rid}:gen:{side}")
        if errors:
            raise errors[0]
        missing = [pid for pid in ids if complete(pid) is None]
        if missing and svc.run_finished(rid):
            log.info("run %s decided with %d prompts not generated: generation stopped", rid, len(missing))
            svc.set_status(rid, "ready")       # nothing more to do: no judging either
            return
        if missing:
            raise RuntimeError(f"generation incomplete for prompts {missing[:5]}")

    def _generate_then_add(self, rid: str, meta: dict) -> None:
        """A generate run stored before streaming (its pairs are created once every output exists)."""
        svc, store = self.service, self.service.store
        gen = meta["generate"]
        prompts = [(p["id"], p["text"]) for p in gen["prompts"]]
        have = store.all_outputs(rid)
        total = 2 * len(prompts)

        def stored(side: str):
            def cb(batch: list, result: dict[str, str]) -> None:
                store.set_outputs(rid, {f"{side}:{pid}": text for pid, text in result.items()})
                have.update({f"{side}:{pid}": text for pid, text in result.items()})
                if self.metrics:
                    self.metrics.generated.inc(len(result))
                both = sum(1 for p, _ in prompts if f"base:{p}" in have and f"tuned:{p}" in have)
                svc.set_status(rid, "generating", progress={"generated": len(have), "to_generate": total,
                                                            "pairs_generated": both})
            return cb

        threads = []
        for side in SIDES:
            todo = [p for p in prompts if f"{side}:{p[0]}" not in have]
            if not todo:
                continue
            batches = [todo[i:i + self.batch_size] for i in range(0, len(todo), self.batch_size)]
            h = self._actor(f"{rid}:gen:{side}", GenerationWorker, gen[side], self.n_threads)
            kw = {"max_tokens": gen.get("max_tokens", 256), "temperature": gen.get("temperature", 0.0)}
            t = threading.Thread(target=self._map, args=(h, "generate", batches, stored(side)), kwargs=kw)
            t.start()
            threads.append(t)
        for t in threads:
            t.join()
        for side in SIDES:
            self._kill(f"{rid}:gen:{side}")
        missing = [p for p, _ in prompts if f"base:{p}" not in have or f"tuned:{p}" not in have]
        if missing:
            raise RuntimeError(f"generation incomplete for prompts {missing[:5]}")
        tags = {p["id"]: p.get("slices") for p in gen["prompts"]}
        pairs = [{"id": pid, "prompt": text, "base": have[f"base:{pid}"], "tuned": have[f"tuned:{pid}"],
                  "slices": tags.get(pid)} for pid, text in prompts]
        svc.add_generated_pairs(rid, pairs)

    def _judge(self, rid: str, meta: dict) -> None:
        """Every judge votes on the unvoted pairs, one batch at a time per judge, in a random order (the run's
        seed) with the pairs whose labels the sampler has processed first; after each batch the service records
        its CPU-seconds and, with ``judge_budget: "auto"``, may stop the judge (services/runs/judge_budget.py).

        Why this order: a random order makes the voted pairs at any time a uniform random subset of the pool,
        so what the judges have seen is representative of it; the labelled pairs go first because a judge's
        value can only be measured on labelled pairs that it voted on. Both are functions of the seed and of
        the processed draws only (never of a pending draw), so the sampler's predictions stay predictable
        (docs/statistics.md). A pair's votes are stored once every judge still voting has voted it; a stopped
        judge's vote is missing (None) on the pairs it never reached."""
        svc = self.service
        todo = svc.unvoted_pairs(rid)
        if not todo:
            svc.add_votes(rid, {})
            return
        criteria = ["overall", *meta.get("criteria", [])]
        names = list(meta["judge_names"])
        rng = np.random.default_rng([int(meta.get("seed") or 0), 0x6A75])
        order = [todo[k] for k in rng.permutation(len(todo))]
        rows = {i: (i, p["prompt"], p["base"], p["tuned"]) for i, p in order}
        url = svc.store.url()
        stopped = set(svc.judges_stopped(rid)) & set(names)
        partial: dict[int, dict[str, dict]] = {i: {} for i, _ in order}
        lock = threading.Lock()
        clock = "process" if self.mode == "ray" else "thread"

        def complete(idx: int) -> bool:
            return all(n in partial[idx] for n in names if n not in stopped)

        def flush(idxs: list[int]) -> None:
            """Store the votes of the pairs every running judge has voted (call holding ``lock``)."""
            done = {}
            for idx in idxs:
                if idx in partial and complete(idx):
                    per = partial.pop(idx)
                    done[idx] = {c: [(per[n].get(c) if n in per else None) for n in names] for c in criteria}
            if done:
                svc.add_votes(rid, done)
                if self.metrics:
                    self.metrics.votes.inc(len(done))

        def next_batch(voted: set[int], cursor: list[int], labelled: list[int], name: str) -> list[tuple]:
            """Up to batch_size pairs: labelled ones not voted yet, then the next ones in the random order as far
            as the judge's room allows (``judge_budget: "auto"``: a judge that has not shown value yet runs at
            most a bounded lead ahead of the labels). ``cursor`` = [position in the random order, processed
            draws already seen]; ``labelled`` = labelled pairs not yet voted. Empty with the cursor at the end:
            every pair is voted; empty before it: the judge must wait for labels."""
            room = svc.judge_room(rid, name)    # before the labels: a label in between must not widen it
            new_draws = svc.labelled_pairs(rid, cursor[1])
            cursor[1] += len(new_draws)
            labelled.extend(i for i in new_draws if i in rows)
            limit = self.batch_size if room is None else min(self.batch_size, room)
            batch: list[int] = []
            while labelled and len(batch) < self.batch_size:
                i = labelled.pop(0)
                if i not in voted and i not in batch:
                    batch.append(i)
            while cursor[0] < len(order):
                i = order[cursor[0]][0]
                if i not in voted and i not in batch:
                    if len(batch) >= limit:
                        break
                    batch.append(i)
                cursor[0] += 1
            return [rows[i] for i in batch]

        def judge_loop(name: str, handle: Any) -> None:
            voted: set[int] = set()
            cursor: list[int] = [0, 0]
            labelled: list[int] = []
            while True:
                batch = next_batch(voted, cursor, labelled, name)
                if not batch and cursor[0] >= len(order):
                    return
                if not batch:
                    # held back by the auto budget until more labels come: wait, unless the stop rule or the
                    # verdict ends the judge (judge_batch_done with no pairs applies both)
                    if svc.judge_batch_done(rid, name, 0, 0.0):
                        time.sleep(self.wait_s)
                        continue
                    with lock:
                        stopped.add(name)
                        flush(list(partial))
                    return
                t0 = time.perf_counter()
                if self.mode == "local":
                    result, cpu_s = handle.call("vote_costed", batch, clock=clock)
                else:
                    ray = self._ensure_ray()
                    result, cpu_s = ray.get(handle.vote_costed.remote(batch, clock=clock))
                voted.update(int(r[0]) for r in batch)
                wall_s = time.perf_counter() - t0
                with lock:
                    for idx, row in result.items():
                        if int(idx) in partial:
                            partial[int(idx)][name] = row
                    flush([int(i) for i in result])
                # after the batch's votes are in, so the stop rule sees them (the work counts are written with
                # the next votes, a stop at once)
                keep = svc.judge_batch_done(rid, name, len(batch), cpu_s, wall_s)
                if not keep:
                    with lock:
                        stopped.add(name)
                        flush(list(partial))       # the pairs that were waiting only for this judge
                    log.info("run %s: judge %s stopped (worthless on the labels so far, or the run is decided)",
                             rid, name)
                    return

        threads = []
        for spec, name in zip(meta["judges"], names, strict=True):
            if name in stopped:
                continue
            # a feature juror needs no core of its own; reserving one would leave a model judge unscheduled
            # on a 2-core machine (every actor holds its CPU until all judges are done)
            free = isinstance(spec, str) and spec.startswith("feature:")
            cache = functools.partial(redis_vote_cache, url) if url else None
            h = self._actor(f"{rid}:judge:{name}", JudgeWorker, spec, criteria, cache, self.n_threads,
                            num_cpus=0 if free else None)
            t = threading.Thread(target=judge_loop, args=(name, h), name=f"judge-{rid}-{name}", daemon=True)
            t.start()
            threads.append(t)
        for t in threads:
            t.join()
        for name in names:
            self._kill(f"{rid}:judge:{name}")
        with lock:
            flush(list(partial))   # every judge is done or stopped: what is left has all the votes it will get
        left = svc.unvoted_pairs(rid)
        if left:
            raise RuntimeError(f"judging incomplete: {len(left)} pairs without votes")
        svc.judging_finished(rid)


def generate_in_process(spec: dict, prompts: list[dict]) -> dict[str, str]:
    """``Pipeline.generate_outputs`` without Ray (the same GenerationWorker, in this process): experiments'
    generator when the service runs no pipeline, and outside the service."""
    return Pipeline(None, mode="local").generate_outputs(spec, prompts)
