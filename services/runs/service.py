"""RunService: the facade the routes, the pipeline and the CLI call for /v1/runs.

It owns no rule of its own: it wires the parts of ``services.runs`` together and gives each public call one
line — find the run's owner (``Ownership.route``: here, or forwarded to the replica that owns it), take the
run's lock, call the part that knows the rule, wait for the write. Callers never see a lock or a
``RunRuntime``: the hot label round trip has async entry points (``next_pair_async``, ``submit_label_async``)
that make the change on the event loop when the run's lock is free and await its write.

Parts (each module says what it owns): ``pool`` (creation, pairs, activation, the pipeline's hooks),
``leases`` (hand-out), ``intake`` (who may label what), ``writer`` (group commit to Redis), ``loader``
(rehydration), ``ownership`` (one owner per run, forwarding, eviction), ``status`` (read-only views, the
``run.decided`` event), ``model`` (the in-memory run). The Redis keys are ``services.store.RedisStore``'s.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

from tiebreak.services.errors import NotFound
from tiebreak.services.runs import judge_budget
from tiebreak.services.runs.intake import LabelIntake
from tiebreak.services.runs.leases import Leases
from tiebreak.services.runs.loader import load_run
from tiebreak.services.runs.model import OVERALL, Pending, RunRuntime
from tiebreak.services.runs.ownership import Ownership
from tiebreak.services.runs.pool import RunPool
from tiebreak.services.runs.status import DecidedEvents, list_runs, report_copy, status_of
from tiebreak.services.runs.writer import RunWriter
from tiebreak.services.store import RedisStore

# Routed methods (RunService.route): run on the replica that owns the run; others forward them over HTTP.
ROUTED = ("next_pair", "submit_label", "status", "report_html", "draw_batch", "add_pairs", "run_meta")


class RunService:
    """Create runs, hand out pairs, take labels, report status. Thread-safe (a lock per run).

    ``clock`` (default ``time.time``) is the wall clock of leases and timestamps; tests pass a fake one."""

    def __init__(self, store: RedisStore, *, notify: Callable[[str, dict, str | None], None] | None = None,
                 metrics: Any = None, lease_ttl_s: float = 600.0, url: str = "", token: str = "",
                 owner_ttl_s: float = 10.0, webhook_url: str | None = None, idle_evict_s: float = 1800.0,
                 max_runs: int = 1000, clock: Callable[[], float] = time.time):
        self.store = store
        self.metrics = metrics
        self.clock = clock
        self.pipeline: Any = None            # set by the app: services.pipeline.Pipeline
        self.writer = RunWriter(store, on_failed=lambda rt, why: self.ownership.drop(rt, why))
        self.ownership = Ownership(store, self.writer, lambda rid, _owner: load_run(store, rid, self.clock),
                                   local=self._local, on_loaded=self._on_loaded, url=url, token=token,
                                   owner_ttl_s=owner_ttl_s, idle_evict_s=idle_evict_s, max_runs=max_runs)
        self.events = DecidedEvents(webhook_url, notify)
        self.pool = RunPool(store, self.writer, start_pipeline=self._start_pipeline, clock=clock,
                            default_lease_ttl_s=lease_ttl_s)
        self.leases = Leases(store, self.writer, self.events, clock=clock, metrics=metrics)
        self.intake = LabelIntake(self.writer, self.events, forget=self.ownership.forget, clock=clock,
                                  metrics=metrics)

    # ------------------------------------------------------------------------------------- lifecycle
    def runtime(self, rid: str) -> RunRuntime:
        """The run, owned and in memory here (``Ownership.runtime``). For the pipeline and tests: a route
        never needs it."""
        return self.ownership.runtime(rid)

    def loaded_count(self) -> int:
        """How many runs this replica holds in memory (the tiebreak_runs_in_memory gauge)."""
        return self.ownership.loaded_count()

    def release(self, rid: str) -> None:
        self.ownership.release(rid)

    def close(self) -> None:
        """Release every run (graceful shutdown: other replicas take them over at once)."""
        self.ownership.close()

    def _start_pipeline(self, rid: str) -> None:
        if self.pipeline is not None:
            self.pipeline.submit(rid)

    def _on_loaded(self, rt: RunRuntime) -> None:
        if rt.meta["status"] in ("generating", "judging"):
            self._start_pipeline(rt.rid)        # taken over (or restarted) mid-pipeline: carry on here

    # ------------------------------------------------------------------------------------- routing
    def route(self, method: str, rid: str, *args: Any, forwarded: bool = False) -> Any:
        """``method`` of run ``rid`` on the replica that owns it (see ``services.runs.ownership``)."""
        return self.ownership.route(method, rid, args, forwarded=forwarded)

    def _local(self, method: str) -> Callable[..., Any]:
        return getattr(self, "_local_" + method)

    def local_call(self, method: str, rid: str, args: list) -> Any:
        """A call forwarded by another replica (the internal route)."""
        if method not in ROUTED:
            raise NotFound(f"unknown method {method!r}", "method")
        self.ownership.check_args(method, args)
        return self.route(method, rid, *args, forwarded=True)

    # ------------------------------------------------------------------------------------- the pool
    def create_run(self, spec: dict) -> str:
        """``spec`` = validated RunCreate as a dict. Returns the run id."""
        rid = self.pool.create(spec)
        rt = self.runtime(rid)
        with rt.lock:
            self.pool.activate(rt)
        if rt.meta["status"] in ("generating", "judging"):
            self._start_pipeline(rid)
        if self.metrics:
            self.metrics.runs_created.inc()
        return rid

    def add_pairs(self, rid: str, pairs: list[dict]) -> dict:
        return self.route("add_pairs", rid, pairs)

    def _local_add_pairs(self, rt: RunRuntime, pairs: list[dict]) -> dict:
        return self.pool.add_pairs(rt, pairs)

    def list_runs(self) -> list[dict]:
        return list_runs(self.store)

    # The pipeline's calls run only on the run's owner (the replica that started the pipeline, or took the run
    # over and resumed it): a pipeline whose replica lost the run gets NotOwner and stops.
    def set_status(self, rid: str, status: str, error: str | None = None, progress: dict | None = None) -> None:
        self.pool.set_status(self.runtime(rid), status, error, progress)

    def add_generated_pairs(self, rid: str, pairs: list[dict]) -> None:
        """Called by the pipeline when generation finished: store the pairs (status goes to judging/ready)."""
        self.pool.add_generated_pairs(self.runtime(rid), pairs)

    def outputs_ready(self, rid: str, outputs: dict[str, tuple[str, str]], made: int | None = None) -> int:
        """A streaming generate run's outputs {pair_id: (base, tuned)} are made (the pipeline, as it goes):
        the pairs become leasable. Returns how many pairs still wait for outputs."""
        return self.pool.outputs_ready(self.runtime(rid), outputs, made)

    def run_finished(self, rid: str) -> bool:
        """Every verdict of the run is final (the pipeline stops making outputs nobody will label)."""
        rt = self.runtime(rid)
        with rt.lock:
            return rt.finished

    def generation_wanted(self, rid: str) -> list[str]:
        """Pair ids the sampler drew whose outputs are not made yet (the generator makes them first)."""
        return self.pool.generation_wanted(self.runtime(rid))

    def add_votes(self, rid: str, votes: dict[int, dict]) -> None:
        """Store judge votes {idx: {criterion: [p per judge]}} (called by the pipeline per batch)."""
        self.pool.add_votes(self.runtime(rid), votes)

    def unvoted_pairs(self, rid: str) -> list[tuple[int, dict]]:
        return self.pool.unvoted_pairs(self.runtime(rid))

    # judge_budget (services/runs/judge_budget.py): the pipeline reports each judge's batches and asks whether
    # to go on; the stop rule reads only the labels already processed by the sampler
    def judge_batch_done(self, rid: str, name: str, pairs: int, cpu_s: float, wall_s: float = 0.0) -> bool:
        """Record a judge's batch (pairs, CPU-seconds, wall seconds); False when the judge must stop voting in
        this run."""
        rt = self.runtime(rid)
        with rt.lock:
            keep = judge_budget.record_batch(rt, name, pairs, cpu_s, wall_s)
            if not keep:        # a stop is written at once; the work counts go with the batch's votes (add_votes)
                self.writer.commit(rt, meta=rt.meta)
        return keep

    def judge_room(self, rid: str, name: str) -> int | None:
        """How many more pairs the pipeline may vote with judge ``name`` now: None = no limit; under
        ``judge_budget: "auto"`` a judge that has not shown value yet gets the labelled pairs it has not voted and
        what is left of its lead on the labels (0: wait for labels). A function of the processed labels only."""
        rt = self.runtime(rid)
        with rt.lock:
            return judge_budget.room(rt, name)

    def judges_stopped(self, rid: str) -> set[str]:
        """Judges that vote no more in this run (worthless under the auto budget, or the run is decided)."""
        rt = self.runtime(rid)
        with rt.lock:
            return judge_budget.stopped(rt)

    def labelled_pairs(self, rid: str, start: int = 0) -> list[int]:
        """Pairs of the sampler's *processed* draws (their labels are in), in draw order from draw ``start`` on:
        the pipeline judges them first. Not the pending draws: a vote that came sooner because its pair was
        drawn could enter a refit before that draw is processed and make g depend on the draw
        (docs/statistics.md, "Judges that must earn their compute")."""
        rt = self.runtime(rid)
        with rt.lock:
            comp = rt.comps.get(OVERALL)
            return [d.item for d in comp.draws[start:judge_budget.horizon(rt)]] if comp is not None else []

    def judging_finished(self, rid: str) -> None:
        rt = self.runtime(rid)
        with rt.lock:
            judge_budget.finish(rt, list(rt.meta.get("judge_names") or []))
            self.writer.commit(rt, meta=rt.meta)

    def run_meta(self, rid: str) -> dict:
        return self.route("run_meta", rid)

    def _local_run_meta(self, rt: RunRuntime) -> dict:
        with rt.lock:
            return json.loads(json.dumps(rt.meta))

    # ------------------------------------------------------------------------------------ annotation
    def next_pair(self, rid: str, annotator: str) -> dict | None:
        """Lease the next pair for ``annotator``; None when nothing is to be labelled now; ``{"retry_after":
        seconds}`` (no ``lease_id``) when the pair drawn for them is still being generated (a generate run)."""
        return self.route("next_pair", rid, annotator)

    def _local_next_pair(self, rt: RunRuntime, annotator: str) -> dict | None:
        with rt.lock:
            p = self.leases.next_pair(rt, annotator)
        return self.wait(p)

    def submit_label(self, rid: str, label: dict) -> dict:
        """Store one annotator's verdict. Idempotent per (pair_id, annotator)."""
        return self.route("submit_label", rid, label)

    def _local_submit_label(self, rt: RunRuntime, label: dict) -> dict:
        with rt.lock:
            p = self.intake.submit(rt, label)
        return self.wait(p)

    @staticmethod
    def wait(p: Pending) -> Any:
        """The answer of a queued change, once its write is stored."""
        return p.finish(p.fut.result() if p.fut is not None else None)

    # The label round trip (`next` + `labels`) is the hot path: the async routes make the (sub-millisecond)
    # change on the event loop when the run's lock is free, then await its queued write (group commit) without
    # blocking the loop; a run not in memory yet (a load can take seconds) or busy goes to a worker thread.
    async def next_pair_async(self, rid: str, annotator: str) -> dict | None:
        return await self._hot(rid, self.leases.next_pair, self.next_pair, annotator)

    async def submit_label_async(self, rid: str, label: dict) -> dict:
        return await self._hot(rid, self.intake.submit, self.submit_label, label)

    async def _hot(self, rid: str, locked: Callable[[RunRuntime, Any], Pending], sync: Callable[[str, Any], Any],
                   arg: Any) -> Any:
        rt = self.ownership.try_lock(rid)
        if rt is None:
            import anyio.to_thread

            return await anyio.to_thread.run_sync(sync, rid, arg)
        try:
            p = locked(rt, arg)
        finally:
            rt.lock.release()
        return p.finish(await asyncio.wrap_future(p.fut) if p.fut is not None else None)

    # -------------------------------------------------------------------------- annotation-tool queues
    def draw_batch(self, rid: str, k: int) -> list[tuple[dict, float, dict | None]]:
        """Up to k pairs to label in priority order (pending draws first, then new draws), without leases —
        for annotation tools that keep their own queue. Returns (pair, priority in (0, 1], votes)."""
        return self.route("draw_batch", rid, k)

    def _local_draw_batch(self, rt: RunRuntime, k: int) -> list:
        return self.leases.draw_batch(rt, k)

    # ---------------------------------------------------------------------------------------- views
    def status(self, rid: str) -> dict:
        return self.route("status", rid)

    def _local_status(self, rt: RunRuntime) -> dict:
        with rt.lock:
            return status_of(rt)

    def report_html(self, rid: str) -> str:
        """The run's HTML report, rendered by the replica that owns the run."""
        return self.route("report_html", rid)

    def _local_report_html(self, rt: RunRuntime) -> str:
        """The lock is held only to copy the run's comparisons (milliseconds); the rendering (its baseline
        simulations take seconds) runs on the copy, so labels never wait for it."""
        from tiebreak.services.report_page import render_run_report

        with rt.lock:
            run = report_copy(rt)
        return render_run_report(run, lambda i: self.store.get_pair(rt.rid, i))
