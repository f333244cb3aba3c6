"""Handing out pairs: leases for annotators (``next``) and lease-free batches for annotation tools.

Owns the lease rules. ``next`` hands the annotator a lease on one pair for ``lease_ttl_s`` seconds. While
live, the pair is not handed to anyone else (beyond k = ``labels_per_pair``). An expired lease stops counting:
the pair is still drawn-and-pending in the sampler, so the next ``next`` call hands that same pair out first.

Expired leases (decided): a lease that expired is still honoured while the pair was not handed to anyone else
and for at most one more ``lease_ttl_s`` (the *grace*), because the label is as valid as any other (the draw
never depends on who labels) and refusing a late but honest label only wastes work. Once the pair is leased to
another annotator, or labelled k times, or the grace is over, the old lease is gone (deleted from Redis with
the next write of the run) and a label with it gets 409 (``services.runs.intake``).

Time is ``clock()`` (default ``time.time``; tests pass a fake one instead of sleeping).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from tiebreak.services.runs.model import OVERALL, Lease, Pending, RunRuntime, feed, next_items
from tiebreak.services.runs.shared_draws import batch_family, choose_family, waiting_for_outputs
from tiebreak.services.runs.status import DecidedEvents
from tiebreak.services.runs.writer import RunWriter
from tiebreak.services.store import RedisStore

# What `next` answers (204 with this Retry-After, seconds) while the pair the sampler drew is still being generated
RETRY_AFTER_S = 2.0


def live_leases(rt: RunRuntime, now: float) -> list[Lease]:
    """Leases that have not expired (expired ones stay in ``rt.leases`` during their grace, see the module
    docstring, but no longer keep the pair from others)."""
    return [le for le in rt.leases.values() if le.expires > now]


def grace_s(rt: RunRuntime) -> float:
    return float(rt.meta["lease_ttl_s"])


def sweep_leases(rt: RunRuntime, now: float) -> list[str]:
    """Drop expired leases past their grace from memory; returns their ids (to delete from Redis with the
    caller's next write)."""
    grace = grace_s(rt)
    dead = [lid for lid, le in rt.leases.items() if le.expires + grace <= now]
    for lid in dead:
        del rt.leases[lid]
    return dead


class Leases:
    def __init__(self, store: RedisStore, writer: RunWriter, events: DecidedEvents, *,
                 clock: Callable[[], float], metrics: Any = None):
        self.store = store
        self.writer = writer
        self.events = events
        self.clock = clock
        self.metrics = metrics

    def next_pair(self, rt: RunRuntime, annotator: str) -> Pending:
        """Lease the next pair of run ``rt`` for ``annotator`` (the answer: the blind view; None when nothing
        is to be labelled now; ``{"retry_after": s}`` when the drawn pair's outputs are still being generated).
        Call with ``rt.lock`` held; the write is queued (``Pending``)."""
        if not rt.comps or rt.finished:
            return Pending(None, lambda _: None)
        now = self.clock()
        dead = sweep_leases(rt, now)
        live = live_leases(rt, now)
        held = next((le for le in live if le.annotator == annotator), None)
        if held is not None:   # a retried `next` gets the same lease back
            tail = rt.pending_tail()
            return Pending(tail, lambda _: self._lease_view(rt, held))
        leased: dict[int, int] = {}
        for le in live:
            leased[le.idx] = leased.get(le.idx, 0) + 1
        k = rt.required

        def eligible(idx: int) -> bool:
            anns = rt.labels.get(idx, {})
            return annotator not in anns and len(anns) + leased.get(idx, 0) < k

        if rt.family is not None:     # one draw sequence for every question (services.runs.shared_draws)
            chosen, drew = choose_family(rt, eligible)
        else:
            chosen, drew = self._choose_per_comparison(rt, eligible)
        if chosen is None:
            # a streaming generate run whose drawn pair is still being generated: "ask again shortly"
            wait = {"retry_after": RETRY_AFTER_S} if waiting_for_outputs(rt) else None
            if not drew:
                if dead:
                    self.writer.enqueue(rt, release=dead)
                return Pending(None, lambda _: wait)
            event = self.events.check(rt)
            fut = self.writer.enqueue(rt, meta=rt.meta if event else None, release=dead)

            def finish_wait(_: Any) -> dict | None:
                self.events.send(event)
                return wait

            return Pending(fut, finish_wait)
        le = Lease(uuid.uuid4().hex, chosen, annotator, now + float(rt.meta["lease_ttl_s"]))
        # expired leases on this pair are superseded: the pair is someone else's now
        superseded = [lid for lid, old in rt.leases.items() if old.idx == chosen and old.expires <= now]
        # the pair's texts come back from the same transaction that stores the lease (one round trip)
        fut = self.writer.enqueue(rt, lease=(le.lease_id, le.to_dict()), get_pair=le.idx, release=dead + superseded)
        for lid in superseded:
            del rt.leases[lid]
        rt.leases[le.lease_id] = le
        if self.metrics:
            self.metrics.leases.inc()
        view = self._lease_view(rt, le, {"id": rt.pair_ids[le.idx], "prompt": "", "base": "", "tuned": "",
                                         "tuned_left": True})

        def finish(pair: dict | None) -> dict:
            assert pair is not None
            left, right = (pair["tuned"], pair["base"]) if pair["tuned_left"] else (pair["base"], pair["tuned"])
            view.update(prompt=pair["prompt"], left=left, right=right)
            return view

        return Pending(fut, finish)

    @staticmethod
    def _choose_per_comparison(rt: RunRuntime, eligible: Callable[[int], bool]) -> tuple[int | None, bool]:
        """The pair to lease in a run stored before shared draws: pending draws of the overall comparison (and
        of unfinished criteria), else new draws of each unfinished comparison in turn."""
        chosen = None
        drew = False
        for comp in rt.comps.values():
            if comp.finished and comp is not rt.comps[OVERALL]:
                continue
            for idx in comp.pending_items():
                if eligible(idx):
                    chosen = idx
                    break
            if chosen is not None:
                break
        if chosen is None:
            for comp in rt.comps.values():
                if comp.finished:
                    continue
                for _ in range(8):
                    new = next_items(rt, comp, 1)
                    if not new:
                        break
                    drew = True
                    # labels given before the draw (several annotators, webhooks) are fed now
                    feed(rt, new[0])
                    if new[0] in comp.labels:
                        continue
                    if eligible(new[0]):
                        chosen = new[0]
                        break
                if chosen is not None:
                    break
        return chosen, drew

    def _lease_view(self, rt: RunRuntime, le: Lease, pair: dict | None = None) -> dict:
        if pair is None:
            pair = self.store.get_pair(rt.rid, le.idx)
        assert pair is not None
        left, right = (pair["tuned"], pair["base"]) if pair["tuned_left"] else (pair["base"], pair["tuned"])
        return {"pair_id": pair["id"], "lease_id": le.lease_id, "lease_expires_at": le.expires,
                "prompt": pair["prompt"], "left": left, "right": right, "criteria": rt.criteria,
                "progress": {"labelled_by_you": rt.per_annotator.get(le.annotator, 0),
                             "labels": len(rt.comps[OVERALL].labels) if rt.comps else 0,
                             "budget": rt.meta["budget"]}}

    def draw_batch(self, rt: RunRuntime, k: int) -> list:
        """Up to k pairs to label in priority order (pending draws first, then new draws), without leases —
        for annotation tools that keep their own queue. Returns (pair, priority in (0, 1], votes). Takes the
        run's lock itself (the draws are written before it returns)."""
        rid = rt.rid
        with rt.lock:
            if not rt.comps or rt.finished:
                return []
            if rt.family is not None:
                idxs, drew = batch_family(rt, k)
            else:
                idxs, drew = self._batch_per_comparison(rt, k)
            if drew:
                self.writer.commit(rt)
            pairs = self.store.get_pairs(rid, idxs)
            votes = self.store.all_votes(rid) if rt.meta["judge_names"] else {}
            n = max(len(idxs), 1)
            return [(p, 1.0 - r / n, votes.get(i)) for r, (i, p) in enumerate(zip(idxs, pairs, strict=True))
                    if p is not None]

    @staticmethod
    def _batch_per_comparison(rt: RunRuntime, k: int) -> tuple[list[int], bool]:
        """draw_batch for a run stored before shared draws: each comparison's pending draws, then the overall
        comparison's new draws."""
        order: list[int] = []
        for comp in rt.comps.values():
            if not comp.finished:
                order += [i for i in comp.pending_items() if len(rt.labels.get(i, {})) < rt.required]
        drew = False
        ov = rt.comps[OVERALL]
        while len(dict.fromkeys(order)) < k and not ov.finished:
            new = next_items(rt, ov, min(k, 256))
            if not new:
                break
            drew = True
            for i in new:
                feed(rt, i)
            order += [i for i in new if i not in ov.labels]
        return list(dict.fromkeys(order))[:k], drew
