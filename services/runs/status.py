"""The read-only views of a run: its status (GET /v1/runs/{id}), the copy the HTML report renders from, the run
list, and the ``run.decided`` event built from the status.

Owns what a caller outside ``services.runs`` may see of a run. Everything here reads a ``RunRuntime`` under
its lock (the caller's ``RunService`` method takes it) and returns plain data or a private copy, so no route and
no renderer ever holds a run's lock or reads its comparisons while labels change them.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tiebreak.sampler.engine import Comparison
from tiebreak.sampler.family import ComparisonFamily
from tiebreak.sampler.slices import alpha_split_text
from tiebreak.services.runs.judge_budget import judges_value
from tiebreak.services.runs.model import OVERALL, RunRuntime
from tiebreak.services.runs.prior import prior_summary
from tiebreak.services.runs.shared_draws import family_status
from tiebreak.services.store import RedisStore
from tiebreak.services.webhooks import outbox_entry


def status_of(rt: RunRuntime) -> dict:
    """The run's status (the RunStatus model's fields); call under ``rt.lock``."""
    meta = rt.meta
    out: dict[str, Any] = {
        "run_id": rt.rid, "name": meta["name"], "status": meta["status"], "n_pairs": len(rt.pair_ids),
        "votes": rt.n_voted, "labels": 0, "annotations": rt.n_annotations, "estimate": None,
        "interval": [0.0, 1.0], "alpha": meta["alpha"], "margin": meta["margin"], "budget": meta["budget"],
        "decision": "running", "method": meta.get("method"), "judges": meta["judge_names"],
        "labels_per_pair": rt.required, "pending": 0, "criteria": {}, "progress": meta.get("progress") or {},
        "error": meta.get("error"), "created_at": meta["created_at"],
        "alpha_split": f"bonferroni over {1 + len(rt.criteria)} comparisons" if rt.criteria else None,
        "slices": {}, "slice_warnings": list(meta.get("slice_warnings") or []),
        "finished": bool(rt.comps) and all(c.finished for c in rt.comps.values()), "multiplicity": None,
        "calibration_prior": prior_summary(meta),
    }
    # progress of the machines and the humans (a streaming run labels while the first two still grow)
    progress = meta.get("progress") or {}
    out["generated"] = len(rt.pair_ids) - len(rt.ungenerated) if rt.pair_ids \
        else int(progress.get("pairs_generated", 0))
    out["judged"] = rt.n_voted if meta["judge_names"] else 0
    out["progress"] = dict(progress)
    out["judge_budget"] = meta.get("judge_budget", "all")
    out["judges_value"] = judges_value(rt)
    if meta.get("slices"):
        out["alpha_split"] = alpha_split_text(meta["alpha"], len(meta["slices"]), 1 + len(rt.criteria))
    if rt.family is not None:     # one draw sequence, Holm over every question (services.runs.shared_draws)
        family_status(rt, out)
        return out
    for name, comp in rt.comps.items():
        s = comp.status()
        d = {"labels": s.labels, "estimate": s.estimate, "interval": [s.lower, s.upper], "alpha": s.alpha,
             "decision": s.decision.value, "method": s.method, "pending": s.pending,
             "pool_version": s.pool_version,
             "slices": {k: v.to_dict() for k, v in comp.slice_statuses().items()}}
        if name == OVERALL:
            out.update(d)
            out["progress"]["labels"] = s.labels   # the overall verdict's labels, as "labels" above
        else:
            out["criteria"][name] = d
    return out


@dataclass(frozen=True)
class ReportCopy:
    """What the HTML report of a run needs, copied off the run (services/report_page.py renders it without
    the run's lock: its baseline simulations take seconds)."""

    rid: str
    meta: dict
    comps: dict[str, Comparison]         # empty: no comparison yet
    n_pairs: int
    n_votes: int
    n_annotations: int
    n_annotators: int
    labels_per_pair: int
    family: ComparisonFamily | None = None   # a run on one draw sequence: the copy of its family (comps are its)


def report_copy(rt: RunRuntime) -> ReportCopy:
    """Copy what the report needs (call under ``rt.lock``: milliseconds)."""
    # judge votes are never changed in place (add_items makes a new matrix): share them, copy the rest
    comps = {name: copy.deepcopy(c, memo={id(c.votes): c.votes}) for name, c in rt.comps.items()} \
        if OVERALL in rt.comps else {}
    family = ComparisonFamily(comps, rt.family.multiplicity) if rt.family is not None and comps else None
    return ReportCopy(rid=rt.rid, meta=copy.deepcopy(rt.meta), comps=comps, n_pairs=len(rt.pair_ids),
                      n_votes=rt.n_voted, n_annotations=rt.n_annotations, n_annotators=len(rt.per_annotator),
                      labels_per_pair=rt.required, family=family)


def list_runs(store: RedisStore) -> list[dict]:
    out = []
    for rid in store.run_ids():
        m = store.get_meta(rid)
        if m:
            out.append({"run_id": rid, "name": m["name"], "status": m["status"], "created_at": m["created_at"]})
    return out


Event = tuple[dict, str | None]      # (the run's status, the run's own webhook_url)


class DecidedEvents:
    """The ``run.decided`` webhook: written to the Redis outbox with the change that decided the run (at least
    once, services/webhooks.py) and passed to ``notify`` once that change is stored."""

    def __init__(self, webhook_url: str | None, notify: Callable[[str, dict, str | None], None] | None):
        self.webhook_url = webhook_url       # default receiver when the run names none
        self.notify = notify

    def check(self, rt: RunRuntime) -> Event | None:
        """The event when the overall verdict just became final (flag set in meta; the caller writes meta with
        the change and calls ``send`` once stored)."""
        ov = rt.comps.get(OVERALL)
        if ov is not None and ov.decision.final and not rt.meta.get("decided_notified"):
            rt.meta["decided_notified"] = True
            st, url = status_of(rt), rt.meta.get("webhook_url") or self.webhook_url
            if url:   # at-least-once: the outbox entry is written with the decision (services/webhooks.py)
                rt.outbox.append(outbox_entry("run.decided", st, url))
            return st, rt.meta.get("webhook_url")
        return None

    def send(self, event: Event | None) -> None:
        if event is not None and self.notify is not None:
            self.notify("run.decided", *event)
