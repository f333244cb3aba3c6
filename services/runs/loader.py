"""Rehydration: a run's in-memory ``RunRuntime`` rebuilt exactly from what Redis holds.

Owns the read side of a run's persistence: meta, pair index, judge-vote matrices, the sampler snapshots and the
op log replayed after them (the sampler is deterministic given its state, so snapshot + replay is exact),
labels, and the leases still honoured (expired ones are kept during their grace, see ``services.runs.leases``).
The write side is ``RunWriter``; the keys themselves are ``RedisStore``'s.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable

import numpy as np

from tiebreak.sampler.engine import Comparison
from tiebreak.services.errors import NotFound
from tiebreak.services.runs.model import OVERALL, Lease, RunRuntime, no_votes, offer_label
from tiebreak.services.runs.shared_draws import STATE_KEY, load_family
from tiebreak.services.store import RedisStore


def vote_matrices(store: RedisStore, rt: RunRuntime, lo: int, hi: int
                  ) -> tuple[dict[str, np.ndarray | None], np.ndarray | None]:
    """Judge-vote matrices (rows lo..hi-1) per comparison (None for a comparison without judge votes), and
    which rows have their votes stored (None: all; a run whose judges are still voting streams the rest)."""
    names = rt.meta["judge_names"]
    out: dict[str, np.ndarray | None] = {}
    votes = store.all_votes(rt.rid) if names else {}
    judged = bool(rt.meta["judges"])    # judges will vote on every criterion, now or later
    for comp in [OVERALL, *rt.criteria]:
        if not names:
            out[comp] = None
            continue
        rows = []
        have = False
        for i in range(lo, hi):
            v = (votes.get(i) or {}).get(comp)
            if v is not None:
                have = True
            rows.append([math.nan if x is None else float(x) for x in (v or [None] * len(names))])
        out[comp] = np.asarray(rows, dtype=float).reshape(hi - lo, len(names)) if have or judged \
            or comp == OVERALL else None
    voted = None
    if judged:
        voted = np.fromiter((i in votes for i in range(lo, hi)), dtype=bool, count=hi - lo)
    return out, voted


def _load_comparisons(rt: RunRuntime, states: dict[str, str], mats: dict[str, np.ndarray | None], n: int,
                      ops: list[str]) -> None:
    """A run's per-criterion comparisons from their snapshots, then the ops logged after them replayed."""
    for name, s in states.items():
        d = json.loads(s)
        m = mats.get(name)
        if m is None or m.shape[1] != d["n_judges"]:   # a comparison without judge votes
            m = no_votes(n, d["n_judges"]) if d["n_judges"] else no_votes(n)
        rt.comps[name] = Comparison.from_dict(d, m)
    for op in ops:
        o = json.loads(op)
        if o[0] == "next":
            rt.comps[o[1]].next_items(o[2])
        elif o[0] == "votes":                 # votes streamed in (add_votes), in log order
            for name, comp in rt.comps.items():
                m = mats.get(name)
                if comp.votes.shape[1] and m is not None and m.shape[1] == comp.votes.shape[1]:
                    comp.add_votes(o[1], m[o[1]])
        else:
            offer_label(rt.comps[o[1]], o[2], o[3])
    # keep the overall comparison first
    rt.comps = {k: rt.comps[k] for k in [OVERALL, *rt.criteria] if k in rt.comps}


def load_run(store: RedisStore, rid: str, clock: Callable[[], float]) -> tuple[RunRuntime, list[str]]:
    """Run ``rid`` as stored, and the ids of its leases past their grace (to delete with the next write).
    The caller holds the run's ownership lease and sets ``owner`` / ``owned_until``."""
    meta = store.get_meta(rid)
    if meta is None:
        raise NotFound(f"run {rid!r} does not exist", "run_id")
    index = store.load_index(rid)
    pair_ids = [""] * len(index)
    for pid, (i, _) in index.items():
        pair_ids[i] = pid
    rt = RunRuntime(rid, meta, index, pair_ids)
    rt.seq = store.load_seq(rid)
    if meta.get("generate_streams") and int((meta.get("progress") or {}).get("pairs_generated", 0)) < len(pair_ids):
        # a streaming generate run: its pairs exist from the start, their outputs as they are made (or never,
        # for prompts a decided run did not need)
        rows = store.get_pairs(rid, range(len(pair_ids)))
        rt.ungenerated = {i for i, row in enumerate(rows) if row is None or row.get("generated") is False}
    rt.n_voted = store.n_votes(rid)
    n = meta["n_active"]
    if n:
        mats, _ = vote_matrices(store, rt, 0, n)
        states = store.load_states(rid)
        rt.ops_at_snapshot = int(states.pop("_ops_at", 0))
        ops = store.load_ops(rid)
        rt.ops_total = len(ops)
        if STATE_KEY in states:                   # one draw sequence (services.runs.shared_draws)
            load_family(rt, states[STATE_KEY], mats, n, ops[rt.ops_at_snapshot:])
        else:                                     # a run stored before shared draws: one comparison each
            _load_comparisons(rt, states, mats, n, ops[rt.ops_at_snapshot:])
    for idx, ann, rec in store.load_labels(rid):
        rt.labels.setdefault(idx, {})[ann] = rec
        rt.n_annotations += 1
        rt.per_annotator[ann] = rt.per_annotator.get(ann, 0) + 1
    now = clock()
    expired = []
    grace = float(meta["lease_ttl_s"])
    for lid, d in store.load_leases(rid).items():
        if d["expires"] + grace > now:     # expired leases are honoured during their grace
            rt.leases[lid] = Lease(lid, int(d["idx"]), d["annotator"], float(d["expires"]))
        else:
            expired.append(lid)
    return rt, expired
