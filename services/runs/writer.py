"""The group-commit writer: every change of an owned run reaches Redis through here.

Owns the write queue and the one writer thread. A change is made in memory under the run's lock, its write is
queued (``enqueue``: the sampler's new operations, a snapshot when due, the label/lease/meta of the change, the
webhook outbox entries) and the lock is released; the writer thread turns everything queued into one
``RedisStore.apply`` script (FIFO, so the op log keeps the order of memory), and the caller answers only once
its future resolves. If a write fails, every queued write of that run fails too (they were computed from the
lost state: the run's write sequence number refuses them) and ``on_failed`` drops the in-memory copy; the other
runs' writes of a failed batch are retried one by one (one bad write never fails unrelated writes).

Kept apart from ownership and from the changes themselves so that "how a change becomes durable" is one
object with three calls (``enqueue``, ``commit``, ``flush``).
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from tiebreak.services.runs.model import OwnershipLost, RunRuntime
from tiebreak.services.runs.shared_draws import family_state
from tiebreak.services.store import RedisStore

log = logging.getLogger(__name__)

BATCH = 256           # writes per script at most


class RunWriter:
    def __init__(self, store: RedisStore, on_failed: Callable[[RunRuntime, BaseException], None]):
        self.store = store
        self.on_failed = on_failed      # drop the run's in-memory copy (its write failed or was refused)
        self._wq: queue.SimpleQueue = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._lock = threading.Lock()

    def enqueue(self, rt: RunRuntime, *, snapshot: bool = False, get_pair: int | None = None,
                **kw: Any) -> Future:
        """Queue the sampler's new operations (an append-only log) with the label/lease as one write (call
        under ``rt.lock``); the returned future resolves once it is stored (see the module docstring).

        The sampler is deterministic given its state (its rng included), so snapshot + replay of the logged
        operations rebuilds it exactly; a snapshot of every comparison is written once the log since the
        last one grows past max(200, labels / 2) operations (amortised O(1) per label), or when ``snapshot``.
        The write carries the run's next sequence number and our ownership value (``RedisStore.apply``)."""
        if rt.broken is not None:
            raise rt.broken
        ops = [json.dumps(o) for o in rt.ops]
        n_labels = max((len(c.labels) for c in rt.comps.values()), default=0)
        states = None
        total = rt.ops_total + len(ops)
        if rt.comps and (snapshot or total - rt.ops_at_snapshot > max(200, n_labels // 2)):
            states = family_state(rt) if rt.family is not None else \
                {n: c.to_json(include_votes=False) for n, c in rt.comps.items()}
            states["_ops_at"] = str(total)
        meta = kw.pop("meta", None)
        outbox, rt.outbox = rt.outbox, []
        cmds = self.store.run_cmds(rt.rid, {"states": states, "ops": ops, "meta": json.dumps(meta) if meta else None,
                                            "outbox": outbox, **kw})
        fut: Future = Future()
        self._start()
        self._wq.put((rt, (rt.rid, rt.owner, rt.seq, cmds, get_pair), fut))
        rt.seq += 1
        rt.tail = fut
        rt.ops.clear()
        rt.ops_total = total
        if states is not None:
            rt.ops_at_snapshot = total
        return fut

    def commit(self, rt: RunRuntime, **kw: Any) -> Any:
        """Queue a write and wait until it is stored (under ``rt.lock``: for the rarer, synchronous paths)."""
        return self.enqueue(rt, **kw).result()

    @staticmethod
    def flush(rt: RunRuntime) -> None:
        """Wait until the run's queued writes are stored (under ``rt.lock``, before writing directly)."""
        if rt.tail is not None:
            rt.tail.result()

    def _start(self) -> None:
        if self._writer is None:
            with self._lock:
                if self._writer is None:
                    t = threading.Thread(target=self._write_loop, name="tiebreak-writer", daemon=True)
                    t.start()
                    self._writer = t

    def _write_loop(self) -> None:
        while True:
            batch = [self._wq.get()]
            while len(batch) < BATCH:
                try:
                    batch.append(self._wq.get_nowait())
                except queue.Empty:
                    break
            live = []
            for item in batch:
                rt, _, fut = item
                if rt.broken is not None:
                    fut.set_exception(rt.broken)
                else:
                    live.append(item)
            if not live:
                continue
            results: list[tuple[str, dict | None] | Exception]   # per write: its answer, or why it failed
            try:
                results = list(self.store.apply([g for _, g, _ in live]))
            except Exception as e:  # noqa: BLE001 - one bad write must not fail the others: one by one
                log.warning("write of %d queued change(s) failed (%s: %s); writing them one by one",
                            len(live), type(e).__name__, e)
                results = []
                for _, g, _ in live:
                    try:   # idempotent: a write of the batch that was stored after all is answered "dup"
                        results.append(self.store.apply([g])[0])
                    except Exception as e1:  # noqa: BLE001 - this write's waiter gets the error
                        results.append(e1)
            for (rt, _, fut), res in zip(live, results, strict=True):
                if isinstance(res, Exception):
                    log.error("write to run %s failed: %s: %s", rt.rid, type(res).__name__, res)
                    self.on_failed(rt, res)
                    fut.set_exception(res)
                elif res[0] in ("ok", "dup"):
                    fut.set_result(res[1])
                else:
                    err = OwnershipLost(f"run {rt.rid} is now served by another replica ({res[0]} write, "
                                        "nothing stored); retry")
                    log.warning("write to run %s refused: %s", rt.rid, res[0])
                    self.on_failed(rt, err)
                    fut.set_exception(rt.broken or err)
