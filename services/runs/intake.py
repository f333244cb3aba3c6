"""Label intake: who may label what, and how a label reaches the sampler.

Owns the rules for a new label. A label through the API must come from the holder of a lease on that pair
(``lease_id`` or, without it, the lease that annotator holds on the pair; an expired lease during its grace
counts, see ``services.runs.leases``). A label from an annotation tool (Label Studio, Argilla) must be for a
pair the sampler drew (the tools' exports hand out drawn pairs only) that still needs a label and is not
leased to enough others. Anything else is refused (409/403) and changes nothing: no label is stored, nothing
reaches the sampler, the budget is not touched.

An accepted label is kept per (pair, annotator); with ``labels_per_pair`` = k > 1 the sampler gets the mean of
the k verdicts once all k are in (``model.feed``). The label, the sampler operations it caused, the leases it
releases and (when it decided the run) the ``run.decided`` outbox entry are one write (``RunWriter``): a label
is never answered before it is stored.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tiebreak.sampler.engine import label_from_verdict
from tiebreak.services.errors import BadInput, Conflict, Forbidden, NotFound
from tiebreak.services.runs.leases import grace_s, live_leases, sweep_leases
from tiebreak.services.runs.model import OVERALL, VERDICTS, Pending, RunRuntime, feed
from tiebreak.services.runs.status import DecidedEvents
from tiebreak.services.runs.writer import RunWriter


class LabelIntake:
    def __init__(self, writer: RunWriter, events: DecidedEvents, *, forget: Callable[[str], None],
                 clock: Callable[[], float], metrics: Any = None):
        self.writer = writer
        self.events = events
        self.forget = forget        # drop the in-memory copy of a run (a change failed half-way)
        self.clock = clock
        self.metrics = metrics

    def submit(self, rt: RunRuntime, label: dict) -> Pending:
        """Take one annotator's verdict on a pair of run ``rt`` (idempotent per (pair_id, annotator)). Call
        with ``rt.lock`` held; the write is queued (``Pending``)."""
        rid = rt.rid
        pid, ann = label["pair_id"], label["annotator"]
        if pid not in rt.pair_index:
            raise NotFound(f"pair_id {pid!r} is not a pair of run {rid}; use the pair_id that "
                           "GET /v1/runs/{id}/next returned", "pair_id")
        idx, tuned_left = rt.pair_index[pid]
        crit = label.get("criteria") or {}
        for c, v in crit.items():
            if c not in rt.criteria:
                raise BadInput(f"criterion {c!r} is not one of this run's criteria {rt.criteria}",
                               f"criteria.{c}")
            if v not in VERDICTS:
                raise BadInput(f"verdict {v!r} must be one of {', '.join(VERDICTS)}", f"criteria.{c}")
        existing = rt.labels.get(idx, {}).get(ann)
        if existing is not None:
            # answered once the first copy (possibly still queued) is stored
            res = self._label_result(rt, pid, duplicate=True)
            tail = rt.pending_tail()
            return Pending(tail, lambda _: res)
        now = self.clock()
        self._check_may_label(rt, idx, ann, label, now)
        rec = {"verdict": label["verdict"], "y": label_from_verdict(label["verdict"], tuned_left),
               "criteria": {c: label_from_verdict(v, tuned_left) for c, v in crit.items()},
               "raw_criteria": crit, "at": self.clock(), "source": label.get("source", "api")}
        n_after = len(rt.labels.get(idx, {})) + 1
        # this annotator's leases on the pair; once the pair has its k labels, everyone's
        release = [l_id for l_id, le in rt.leases.items()
                   if le.idx == idx and (le.annotator == ann or n_after >= rt.required)]
        release += sweep_leases(rt, now)
        try:
            rt.labels.setdefault(idx, {})[ann] = rec
            if idx < rt.meta["n_active"]:
                feed(rt, idx)
            event = self.events.check(rt)
            fut = self.writer.enqueue(rt, label=(idx, ann, rec), release=release, meta=rt.meta if event else None)
        except Exception:
            self.forget(rid)   # the stored state is the truth; memory is rebuilt from it
            raise
        for l_id in release:
            rt.leases.pop(l_id, None)
        rt.n_annotations += 1
        rt.per_annotator[ann] = rt.per_annotator.get(ann, 0) + 1
        if self.metrics:
            self.metrics.labels.inc()
        res = self._label_result(rt, pid, duplicate=False)

        def finish(_: Any) -> dict:
            self.events.send(event)
            return res

        return Pending(fut, finish)

    def _check_may_label(self, rt: RunRuntime, idx: int, ann: str, label: dict, now: float) -> None:
        """Refuse (changing nothing) a new label that does not come from a lease holder or, for an annotation
        tool, for a pair the sampler drew that still needs it (module docstring, "Label intake")."""
        pid = rt.pair_ids[idx]
        others = len(rt.labels.get(idx, {}))
        if others >= rt.required:
            raise Conflict(f"pair {pid!r} already has its {rt.required} label(s); this label was not stored. "
                           "Ask GET /v1/runs/{id}/next for another pair", "pair_id")
        source = label.get("source", "api")
        if source != "api":
            drawn = idx in rt.family.pending_items() if rt.family is not None else \
                any(idx in comp.pending_items() for comp in rt.comps.values())
            if not drawn:
                raise Conflict(f"pair {pid!r} was not handed out for labelling (import the tasks/records that "
                               "tiebreak exported; it exports the pairs the sampler drew)", "pair_id")
            held = sum(1 for le in live_leases(rt, now) if le.idx == idx and le.annotator != ann)
            if others + held >= rt.required:
                raise Conflict(f"pair {pid!r} is leased to another annotator; this label was not stored",
                               "pair_id")
            return
        lid = label.get("lease_id")
        grace = grace_s(rt)
        if lid is not None:
            le = rt.leases.get(lid)
            if le is None or le.expires + grace <= now:
                raise Conflict(f"lease_id {lid!r} is not a live lease of run {rt.rid} (unknown, expired past its "
                               "grace, or the pair was handed to someone else); this label was not stored. "
                               "Ask GET /v1/runs/{id}/next for a pair", "lease_id")
            if le.idx != idx:
                raise BadInput(f"lease_id {lid!r} leases pair {rt.pair_ids[le.idx]!r}, not {pid!r}; send the "
                               "pair_id and lease_id from the same `next` response", "lease_id")
            if le.annotator != ann:
                raise Forbidden(f"lease_id {lid!r} is held by another annotator, not {ann!r}", "lease_id")
            return
        if not any(le.idx == idx and le.annotator == ann and le.expires + grace > now for le in rt.leases.values()):
            raise Conflict(f"annotator {ann!r} holds no lease on pair {pid!r}; labels are accepted for pairs "
                           "handed out by GET /v1/runs/{id}/next (send its lease_id); this label was not stored",
                           "lease_id")

    @staticmethod
    def _label_result(rt: RunRuntime, pid: str, duplicate: bool) -> dict:
        st = rt.comps[OVERALL].status() if rt.comps else None
        return {"accepted": True, "duplicate": duplicate, "pair_id": pid,
                "labels": st.labels if st else 0, "decision": st.decision.value if st else "running"}
