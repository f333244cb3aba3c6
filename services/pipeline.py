"""Generation and judging pipeline: plain worker classes, thin Ray actor shells, and the orchestrator.

    GenerationWorker(spec)              one model (backend from judges.backends); generate(batch) -> outputs
    JudgeWorker(spec, criteria, cache)  one judge (judges.jury.Judge) with the Redis vote cache; vote(batch)

Both are plain classes in judges/actors.py (unit-testable without Ray). ``Pipeline`` runs them as Ray actors
(one per model, one per judge; ``max_restarts=-1, max_task_retries=-1``: a crashed actor is restarted and its unfinished batch
re-run) or, with ``mode="local"``, in-process. Finished work is stored per batch — generated outputs in
``tb:run:{rid}:outputs``, votes through ``RunService.add_votes`` — and every judge call goes through the Redis
vote cache, so a retry (or a restart of the whole service) never redoes stored work. The judge loops of a run
are in services/judging.py; in a streaming generate run they vote each pair as soon as its outputs exist.
"""

from __future__ import annotations

import logging
import threading
import uuid
from typing import TYPE_CHECKING, Any

import numpy as np

from tiebreak.judges.actors import GenerationWorker, JudgeWorker, ray_actor
from tiebreak.judges.spec import judge_name, judge_problem
from tiebreak.services.judging import RunJudging

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
            if meta.get("generate_streams") and meta["judges"]:
                self._generate_and_judge(rid, meta)
                return
            self._generate(rid, meta)
        meta = svc.run_meta(rid)
        if meta["judges"] and meta["status"] == "judging":
            self._judge(rid, meta)

    def _generate(self, rid: str, meta: dict) -> None:
        if not meta.get("generate_streams"):
            self._generate_then_add(rid, meta)     # a run stored before generate runs streamed
            return
        if not self._generate_streaming(rid, meta):
            self.service.set_status(rid, "ready")       # decided: nothing more to do

    def _generate_and_judge(self, rid: str, meta: dict) -> None:
        """A streaming generate run with judges: the judges vote on each pair as soon as both its outputs exist
        (services/judging.py), while the others are still being made. Generation ends when every output exists,
        the run is decided, or a judge fails; judging when generation has ended and every generated pair is
        voted (or the judges are stopped). A failure of either fails the run (the judge's error first: when it
        stops generation, generation's own "incomplete" is only its consequence); a restart resumes both from
        what is stored. Status stays ``generating`` while the first votes arrive (docs/api.md)."""
        judging = RunJudging(self, rid, meta, generating=True)
        gen_error: BaseException | None = None
        complete = False
        try:
            complete = self._generate_streaming(rid, meta, judging)
        except BaseException as e:  # noqa: BLE001 - raised below, after the judges have stopped
            gen_error = e
            judging.halt.set()
        judging.close()
        judging.join()
        if judging.errors:
            raise judging.errors[0]
        if gen_error is not None:
            raise gen_error
        if complete:
            judging.finish()
        else:
            log.info("run %s decided before every output was made: generation and judging stopped", rid)
            self.service.set_status(rid, "ready")

    def _generate_streaming(self, rid: str, meta: dict, judging: RunJudging | None = None) -> bool:
        """Both models' outputs for a streaming generate run, one actor per model, each pair's outputs handed
        to the run (``outputs_ready``) the moment both exist, and then to ``judging`` (when given: it is started
        once the generation actors are placed, so that a judge actor waiting for outputs never holds the CPU the
        generation needs). Order: the pairs the sampler drew and is waiting for first (``generation_wanted``,
        asked before every batch), then a random order (the run's seed). Returns whether every output exists
        (False: the run was decided first, and generation stopped).

        Validity does not rest on this order (the draws never depend on what is generated): it only decides
        how long a human waits. Votes follow the outputs (a drawn pair is made first, so it may be voted
        sooner), and the sampler uses a vote only to predict draws made after it arrived (sampler.engine
        ``add_votes``), so the priority given to drawn pairs cannot leak into the estimate (docs/statistics.md,
        "Generate runs stream"). A GGUF model generates one prompt per call (it runs them one by one anyway), so
        a drawn pair waits for at most one other prompt per model; remote backends get ``batch_size`` prompts
        per call. On a small machine the judges (when local) take CPU from generation: the first votes come
        early, the last output somewhat later."""
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
        if judging is not None:
            judging.offer(done0)
        kw = {"max_tokens": gen.get("max_tokens", 256), "temperature": gen.get("temperature", 0.0)}
        errors: list[BaseException] = []

        def side_loop(side: str, handle: Any, per_call: int) -> None:
            cursor = 0
            try:
                while not errors and not (judging is not None and judging.halt.is_set()):
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
                    if judging is not None and done:
                        judging.offer(done)
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
        try:
            if judging is not None:
                if self.mode == "ray" and threads:     # placed (and loaded) before any judge actor is asked for
                    ray = self._ensure_ray()
                    ray.get([self.actors[f"{rid}:gen:{side}"].pid.remote() for side in SIDES])
                judging.start()
        finally:
            for t in threads:
                t.join()
            for side in SIDES:
                self._kill(f"{rid}:gen:{side}")
        if errors:
            raise errors[0]
        missing = [pid for pid in ids if complete(pid) is None]
        if missing and svc.run_finished(rid):
            log.info("run %s decided with %d prompts not generated: generation stopped", rid, len(missing))
            return False
        if missing:
            raise RuntimeError(f"generation incomplete for prompts {missing[:5]}")
        return True

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
        """Every judge votes on the unvoted pairs (services/judging.py: labelled pairs first, then the run's
        seeded random order; ``judge_budget: "auto"`` may stop a judge)."""
        judging = RunJudging(self, rid, meta)
        if not judging.rows:
            self.service.add_votes(rid, {})
            return
        judging.run()
        judging.finish()


def generate_in_process(spec: dict, prompts: list[dict]) -> dict[str, str]:
    """``Pipeline.generate_outputs`` without Ray (the same GenerationWorker, in this process): experiments'
    generator when the service runs no pipeline, and outside the service."""
    return Pipeline(None, mode="local").generate_outputs(spec, prompts)
