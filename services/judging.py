"""A run's judging: every judge votes on the pairs whose outputs exist, one batch at a time, while a streaming
``generate`` run may still be making the others (services/pipeline.py starts it and hands the outputs over).

    ReadyPairs   the pairs whose outputs exist: a growing set, handed from generation to the judges
    JudgeQueue   one judge's order over them: labelled pairs first, then the run's seeded random order
    RunJudging   one run's judge loops (a thread per judge) and the storing of each pair's votes

Order. A random order (the run's seed) makes the voted pairs at any time a uniform random subset of the pairs
that exist, so what the judges have seen is representative of them; the labelled pairs go first because a
judge's value can only be measured on labelled pairs it voted on. In a generate run the order is the same
permutation restricted to the pairs whose outputs exist: a pair handed over later takes its place in the queue
by its rank. "Labelled" means the sampler's *processed* draws only, never the pending ones (docs/statistics.md,
"Judges that must earn their compute"); which pairs exist when depends on past draws (a drawn pair is generated
first), and the sampler uses a vote only to predict draws made after it arrived, so none of this can make the
prediction of a draw depend on that draw (docs/statistics.md, "Generate runs stream").

CPU. On a small machine generation and judging compete for the same cores: judging during generation makes the
first votes come early, not the last output; with Ray each actor reserves its CPUs, so on a 2-CPU Ray a model
judge's actor starts only when the two generation actors are done (a ``feature:`` juror needs none and votes
at once). The generation actors are placed before the judge actors are asked for, so a judge waiting for
outputs can never hold the CPU its own run's generation needs.
"""

from __future__ import annotations

import functools
import heapq
import logging
import threading
import time
from collections.abc import Iterable
from typing import Any

import numpy as np

from tiebreak.judges.actors import JudgeWorker

log = logging.getLogger(__name__)

IDLE_POLL_S = 1.0   # a judge with nothing to vote re-reads the labels this often while outputs are being made


class ReadyPairs:
    """The pair indices whose outputs exist, in the order they were handed over; thread-safe. ``closed``: no
    more will come (generation ended, or there was none)."""

    def __init__(self) -> None:
        self._idxs: list[int] = []
        self._closed = False
        self._cond = threading.Condition()

    def put(self, idxs: Iterable[int]) -> None:
        with self._cond:
            self._idxs.extend(idxs)
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def since(self, k: int, wait_s: float = 0.0) -> tuple[list[int], bool]:
        """(the pairs handed over after the first ``k``, whether the set is closed); with ``wait_s`` > 0 waits
        up to that long for something new when there is nothing."""
        with self._cond:
            if wait_s > 0 and len(self._idxs) <= k and not self._closed:
                self._cond.wait(wait_s)
            return self._idxs[k:], self._closed


class JudgeQueue:
    """One judge's order over the pairs it still has to vote: ``rank`` = {pair index: its place in the run's
    random order}. ``offer`` makes pairs available (their outputs exist), ``labelled`` names pairs whose labels
    the sampler has processed (they jump the queue), ``next_batch`` hands out up to k available pairs, each
    once. Plain data, no I/O."""

    def __init__(self, rank: dict[int, int]):
        self.rank = rank
        self.available: set[int] = set()
        self.handed: set[int] = set()
        self._heap: list[tuple[int, int]] = []
        self._labelled: list[int] = []

    def offer(self, idxs: Iterable[int]) -> None:
        for i in idxs:
            if i in self.rank and i not in self.available:
                self.available.add(i)
                heapq.heappush(self._heap, (self.rank[i], i))

    def labelled(self, idxs: Iterable[int]) -> None:
        self._labelled.extend(i for i in idxs if i in self.rank)

    def next_batch(self, k: int, room: int | None = None) -> list[int]:
        """Up to ``k`` pairs: labelled ones first (always: each one measures the judge), then the next in the
        random order while the batch has fewer than ``room`` pairs (``judge_budget: "auto"``: the pairs a judge
        that has not shown value yet may still vote, a bounded lead on the labels; None = no limit)."""
        batch: list[int] = []
        waiting: list[int] = []       # labelled pairs not handed out yet (batch full, or not available yet)
        for i in self._labelled:
            if i in self.handed or i in batch:
                continue
            if len(batch) < k and i in self.available:
                batch.append(i)
            else:
                waiting.append(i)
        self._labelled = waiting
        while len(batch) < k and self._heap and (room is None or len(batch) < room):
            _, i = heapq.heappop(self._heap)
            if i not in self.handed and i not in batch:
                batch.append(i)
        self.handed.update(batch)
        return batch

    def done(self) -> bool:
        """Every available pair was handed out."""
        return self.available <= self.handed

    def held(self) -> bool:
        """Some available pair is still to be handed out (a judge with no room waits for it)."""
        return any(i not in self.handed for _, i in self._heap)


class RunJudging:
    """The judging of one run: one thread per judge still voting, each taking batches from its ``JudgeQueue``
    over the pairs of ``feed``; after each batch the service records the judge's CPU-seconds and, with
    ``judge_budget: "auto"``, may stop it (services/runs/judge_budget.py). A pair's votes are stored once every
    judge still voting has voted it; a stopped judge's vote is missing (None) on the pairs it never reached.

    ``generating``: outputs are still being made (a streaming generate run): the pipeline hands them over with
    ``offer`` and calls ``close`` when generation has ended; a judge with nothing to vote waits for more. Without
    it the pairs are those stored now, and the loops end when every one is voted."""

    def __init__(self, pipeline: Any, rid: str, meta: dict, generating: bool = False):
        self.pipe, self.svc, self.rid, self.meta = pipeline, pipeline.service, rid, meta
        self.generating = generating
        todo = self.svc.unvoted_pairs(rid)
        self.criteria = ["overall", *meta.get("criteria", [])]
        self.names = list(meta["judge_names"])
        rng = np.random.default_rng([int(meta.get("seed") or 0), 0x6A75])
        self.rank = {todo[k][0]: r for r, k in enumerate(rng.permutation(len(todo)))}
        self.prompt = {i: p["prompt"] for i, p in todo}
        self.index = {p["id"]: i for i, p in todo}
        self.rows: dict[int, tuple[int, str, str, str]] = {}      # pairs whose outputs exist: what a judge sees
        self.partial: dict[int, dict[str, dict]] = {}              # handed over, votes not stored yet
        self.stopped = set(self.svc.judges_stopped(rid)) & set(self.names)
        self.lock = threading.Lock()
        self.feed = ReadyPairs()
        self.errors: list[BaseException] = []
        self.halt = threading.Event()      # a judge or generation failed: every loop stops
        self._thread: threading.Thread | None = None
        self._add([(i, p["prompt"], p["base"], p["tuned"]) for i, p in todo if p.get("generated") is not False])
        if not generating:
            self.feed.close()

    # ------------------------------------------------------------------ the pairs
    def _add(self, rows: list[tuple[int, str, str, str]]) -> None:
        with self.lock:
            new = [r for r in rows if r[0] not in self.rows]
            for r in new:
                self.rows[r[0]] = r
                self.partial.setdefault(r[0], {})
        self.feed.put(r[0] for r in new)

    def offer(self, outputs: dict[str, tuple[str, str]]) -> None:
        """Pairs whose outputs were just made {pair_id: (base, tuned)} (after ``outputs_ready`` stored them)."""
        rows = []
        for pid, (base, tuned) in outputs.items():
            i = self.index.get(pid)
            if i is not None:
                rows.append((i, self.prompt[i], base, tuned))
        self._add(rows)

    def close(self) -> None:
        """Generation has ended: no more pairs will come."""
        self.feed.close()

    # ------------------------------------------------------------------ the loops
    def start(self) -> None:
        """Run the judge loops in a thread of their own (``join`` waits for them)."""
        self._thread = threading.Thread(target=self._run_caught, name=f"judging-{self.rid}", daemon=True)
        self._thread.start()

    def join(self) -> None:
        if self._thread is not None:
            self._thread.join()

    def _run_caught(self) -> None:
        try:
            self.run()
        except BaseException as e:  # noqa: BLE001 - reported by the pipeline thread (run failed)
            self._fail(e)

    def _fail(self, e: BaseException) -> None:
        self.errors.append(e)
        self.halt.set()
        self.feed.close()      # wake the other judges: they stop

    def run(self) -> None:
        """Every judge still voting votes until its pairs are done (and the feed is closed), it is stopped, or a
        judge fails; then the pairs that have every vote they will get are stored."""
        from tiebreak.services.pipeline import redis_vote_cache

        url = self.svc.store.url()
        threads = []
        try:
            for spec, name in zip(self.meta["judges"], self.names, strict=True):
                if name in self.stopped:
                    continue
                # a feature juror needs no core of its own; reserving one would leave a model judge unscheduled
                # on a 2-core machine (every actor holds its CPU until all judges are done)
                free = isinstance(spec, str) and spec.startswith("feature:")
                cache = functools.partial(redis_vote_cache, url) if url else None
                h = self.pipe._actor(f"{self.rid}:judge:{name}", JudgeWorker, spec, self.criteria, cache,
                                     self.pipe.n_threads, num_cpus=0 if free else None)
                t = threading.Thread(target=self._loop_caught, args=(name, h), name=f"judge-{self.rid}-{name}",
                                     daemon=True)
                t.start()
                threads.append(t)
        finally:
            for t in threads:
                t.join()
            for name in self.names:
                self.pipe._kill(f"{self.rid}:judge:{name}")
        if self.errors:
            raise self.errors[0]
        # every judge is done or stopped: what is left has every vote it will get, and so have the pairs still to
        # come from generation (every judge stopped: they are stored as they come, without votes)
        seen = 0
        while True:
            with self.lock:
                self._flush(list(self.partial))
            new, closed = self.feed.since(seen, wait_s=IDLE_POLL_S)
            seen += len(new)
            if self.halt.is_set() or (closed and not new):
                break
        with self.lock:
            self._flush(list(self.partial))

    def _loop_caught(self, name: str, handle: Any) -> None:
        try:
            self._loop(name, handle)
        except BaseException as e:  # noqa: BLE001 - the run fails with the judge's error
            log.warning("run %s: judge %s failed: %s", self.rid, name, e)
            self._fail(e)

    def _loop(self, name: str, handle: Any) -> None:
        svc, rid, pipe = self.svc, self.rid, self.pipe
        queue = JudgeQueue(self.rank)
        seen = draws_seen = 0
        clock = "process" if pipe.mode == "ray" else "thread"
        while not self.halt.is_set():
            new, closed = self.feed.since(seen)
            seen += len(new)
            queue.offer(new)
            room = svc.judge_room(rid, name)    # before the labels: a label read in between must not widen it
            draws = svc.labelled_pairs(rid, draws_seen)
            draws_seen += len(draws)
            queue.labelled(draws)
            idxs = queue.next_batch(pipe.batch_size, room)
            if not idxs and room is not None and queue.held():
                # held back by the auto budget until more labels come (pay as you go): wait, unless the stop
                # rule or the verdict ends the judge (judge_batch_done with no pairs applies both)
                if svc.judge_batch_done(rid, name, 0, 0.0):
                    time.sleep(pipe.wait_s)
                    continue
                with self.lock:
                    self.stopped.add(name)
                    self._flush(list(self.partial))       # the pairs that were waiting only for this judge
                return
            if not idxs:
                if closed:
                    # generation stopped at the verdict before this judge reached every pair: it stops as
                    # "stopped-decided" (as after a batch), and the pairs it did not vote are stored without
                    if self.generating and svc.run_finished(rid) and not svc.judge_batch_done(rid, name, 0, 0.0):
                        with self.lock:
                            self.stopped.add(name)
                    return
                self.feed.since(seen, wait_s=IDLE_POLL_S)   # new outputs, the end of generation, or new labels
                continue
            with self.lock:
                batch = [self.rows[i] for i in idxs]
            t0 = time.perf_counter()
            if pipe.mode == "local":
                result, cpu_s = handle.call("vote_costed", batch, clock=clock)
            else:
                ray = pipe._ensure_ray()
                result, cpu_s = ray.get(handle.vote_costed.remote(batch, clock=clock))
            wall_s = time.perf_counter() - t0
            with self.lock:
                for idx, row in result.items():
                    if int(idx) in self.partial:
                        self.partial[int(idx)][name] = row
                self._flush([int(i) for i in result])
            # after the batch's votes are in, so the stop rule sees them (the work counts are written with
            # the next votes, a stop at once)
            if not svc.judge_batch_done(rid, name, len(batch), cpu_s, wall_s):
                with self.lock:
                    self.stopped.add(name)
                    self._flush(list(self.partial))       # the pairs that were waiting only for this judge
                log.info("run %s: judge %s stopped (worthless on the labels so far, or the run is decided)",
                         rid, name)
                return

    def _flush(self, idxs: list[int]) -> None:
        """Store the votes of the pairs every running judge has voted (call holding ``lock``)."""
        done = {}
        for idx in idxs:
            if idx in self.partial and all(n in self.partial[idx] for n in self.names if n not in self.stopped):
                per = self.partial.pop(idx)
                done[idx] = {c: [(per[n].get(c) if n in per else None) for n in self.names] for c in self.criteria}
        if done:
            self.svc.add_votes(self.rid, done)
            if self.pipe.metrics:
                self.pipe.metrics.votes.inc(len(done))

    # ------------------------------------------------------------------ the end
    def finish(self) -> None:
        """Judging of a run whose pairs all exist is over: every pair must have its votes."""
        left = self.svc.unvoted_pairs(self.rid)
        if left:
            raise RuntimeError(f"judging incomplete: {len(left)} pairs without votes")
        self.svc.judging_finished(self.rid)

