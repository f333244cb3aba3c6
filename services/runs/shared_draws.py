"""Runs on one draw sequence: the overall question, every criterion and every slice of interest follow the
draws of ``sampler.family.ComparisonFamily`` (Holm's step-down over all of them).

A run created with ``meta["draws"] == "shared"`` (every run created since this module exists) has a
``ComparisonFamily`` in ``rt.family`` and ``rt.comps`` is the family's own dict of comparisons (overall first).
A run stored before it (no flag) keeps one ``Comparison`` per criterion, each drawing its own pairs, with
Bonferroni over the questions (``services.runs.pool``), and loads and continues exactly as it was written.

Why one sequence (sampler/family.py's docstring has the argument): every question takes the overall design's
draw with the same known probability, so a pair's label -- its overall verdict and its criterion verdicts --
serves every question the pair belongs to, and no pair is ever drawn for one criterion alone.

Operations logged for a family run (replayed in order after its snapshot by ``services.runs.loader``; the family
is deterministic given its state, so replay is exact):
    ["fnext", k]            ``fam.next_items(k)``
    ["flabels", idx, {q: y}] ``fam.record_labels(idx, {q: y})`` (dict order kept: JSON objects keep it)
    ["votes", items]        judge votes streamed in, as for runs on the old path
The snapshot is one state field, ``_family`` = ``fam.to_dict(include_votes=False)``.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np

from tiebreak.sampler.engine import ComparisonConfig
from tiebreak.sampler.family import ComparisonFamily, QuestionVerdict
from tiebreak.services.runs.model import OVERALL, RunRuntime, mean
from tiebreak.services.runs.prior import prior_for

SHARED = "shared"
STATE_KEY = "_family"


def uses_family(meta: dict) -> bool:
    """The run follows one draw sequence (created with the flag); runs stored before it have none."""
    return meta.get("draws") == SHARED


def start_family(rt: RunRuntime, mats: dict[str, np.ndarray | None], voted: np.ndarray | None,
                 slices: tuple[list[str], np.ndarray] | None, n: int) -> None:
    """The run's first activation: one family over the overall question and each criterion (overall first)."""
    meta = rt.meta
    votes = {name: mats.get(name) for name in [OVERALL, *rt.criteria]}
    has_votes = any(v is not None and v.shape[1] > 0 for v in votes.values())
    cfg = ComparisonConfig(alpha=meta["alpha"], margin=meta["margin"], budget=meta["budget"],
                           method=(meta.get("method") or "active") if has_votes else "classical")
    rt.family = ComparisonFamily.create(votes, cfg, rng=np.random.default_rng([int(meta["seed"]), 0]),
                                        slices=slices, voted=voted, n_items=n, multiplicity="holm",
                                        priors={name: prior_for(meta, name) for name in votes})
    rt.comps = rt.family.comps


def grow_family(rt: RunRuntime, n_new: int, mats: dict[str, np.ndarray | None], voted: np.ndarray | None,
                member: np.ndarray | None) -> None:
    """Later activations: append pairs to every question (a new pool version once draws exist)."""
    fam = rt.family
    assert fam is not None
    votes = {name: m for name, m in mats.items()
             if name in fam.comps and m is not None and m.shape[1] == fam.comps[name].votes.shape[1]}
    fam.add_items(n_new, votes, slice_member=member, voted=voted)


def feed_family(rt: RunRuntime, idx: int) -> bool:
    """Give the family pair idx's mean verdict for every question that has ``labels_per_pair`` verdicts and
    lacks it (one "flabels" op). Returns True if the overall question now has pair idx labelled."""
    fam = rt.family
    assert fam is not None
    anns = rt.labels.get(idx, {})
    ys: dict[str, float] = {}
    for name, comp in fam.comps.items():
        given = [r["y"] if name == OVERALL else (r.get("criteria") or {}).get(name) for r in anns.values()]
        got = [y for y in given if y is not None]
        if len(got) >= rt.required and idx not in comp.labels:
            ys[name] = mean(got)
    if ys:
        rt.ops.append(["flabels", idx, ys])
        fam.record_labels(idx, ys)
    return idx in fam.leader.labels


def draw_family(rt: RunRuntime, k: int) -> list[int]:
    """k new draws of the shared sequence (one "fnext" op); pairs nobody needs are consumed on the way."""
    fam = rt.family
    assert fam is not None
    rt.ops.append(["fnext", k])
    return fam.next_items(k)


def stalled(rt: RunRuntime) -> bool:
    """Every running question waits on a pair that can get no more verdicts: its labels_per_pair labels are in
    and none of them gives this question's verdict (criteria are optional in a label). A question processes its
    draws in draw order and may never skip one (skipping on a missing verdict could select on its value), so
    such a question stays running for good; new draws would serve no one, and the run stops handing out pairs."""
    fam = rt.family
    assert fam is not None
    for comp in fam.comps.values():
        if comp.finished:
            continue
        if comp.processed >= len(comp.draws):
            return False                                  # it can use the next draw
        idx = comp.draws[comp.processed].item
        if idx in comp.labels or len(rt.labels.get(idx, {})) < rt.required:
            return False                                  # its next pair may still get its verdict
    return True


# A streaming generate run draws at most this many pairs ahead whose outputs are still being made: each one
# jumps the generation queue, and a few let an annotator label a pair that is ready meanwhile.
MAX_DRAWN_UNGENERATED = 2


def waiting_for_outputs(rt: RunRuntime) -> int:
    """Drawn pairs still waiting for a label whose outputs are not made yet (a streaming generate run)."""
    if not rt.ungenerated or rt.family is None:
        return 0
    return sum(1 for i in rt.family.pending_items() if i in rt.ungenerated)


def choose_family(rt: RunRuntime, eligible: Callable[[int], bool]) -> tuple[int | None, bool]:
    """The pair to lease (drawn pairs a running question still needs first, in draw order; else new draws),
    and whether anything was drawn. A drawn pair whose outputs are not made yet is not leased: the generator
    makes it next, and it is leased once ready (the draws never depend on what is generated, so this changes
    who labels what and when, not the design)."""
    fam = rt.family
    assert fam is not None
    for idx in fam.pending_items():
        if eligible(idx) and idx not in rt.ungenerated:
            return idx, False
    drew = False
    for _ in range(8 if not stalled(rt) else 0):
        if rt.ungenerated and waiting_for_outputs(rt) >= MAX_DRAWN_UNGENERATED:
            break
        new = draw_family(rt, 1)
        if not new:
            break
        drew = True
        feed_family(rt, new[0])       # labels given before the draw (several annotators, annotation tools)
        if fam.needs(new[0]) and eligible(new[0]) and new[0] not in rt.ungenerated:
            return new[0], True
    return None, drew


def batch_family(rt: RunRuntime, k: int) -> tuple[list[int], bool]:
    """Up to k pairs for an annotation tool's queue (pending draws first, then new ones), and whether it drew."""
    fam = rt.family
    assert fam is not None
    order = [i for i in fam.pending_items() if len(rt.labels.get(i, {})) < rt.required]
    drew = False
    while len(dict.fromkeys(order)) < k and not fam.finished and not stalled(rt):
        new = draw_family(rt, min(k, 256))
        if not new:
            break
        drew = True
        for i in new:
            feed_family(rt, i)
        order += [i for i in new if fam.needs(i)]
    # a streaming generate run: pairs whose outputs are not made yet are exported once they are
    return [i for i in dict.fromkeys(order) if i not in rt.ungenerated][:k], drew


def family_state(rt: RunRuntime) -> dict[str, str]:
    assert rt.family is not None
    return {STATE_KEY: json.dumps(rt.family.to_dict(include_votes=False))}


def load_family(rt: RunRuntime, state: str, mats: dict[str, np.ndarray | None], n: int, ops: list[str]) -> None:
    """Rebuild the family from its snapshot (votes come from the store's vote matrices) and replay the ops."""
    d = json.loads(state)
    votes: dict[str, np.ndarray | None] = {}
    for name, s in d["comps"].items():
        width = int(s["n_judges"])
        m = mats.get(name)
        votes[name] = m if m is not None and m.shape[1] == width else np.full((n, width), np.nan)
    fam = ComparisonFamily.from_dict(d, votes)
    for op in ops:
        o = json.loads(op)
        if o[0] == "fnext":
            fam.next_items(o[1])
        elif o[0] == "flabels":
            fam.record_labels(o[1], o[2])
        elif o[0] == "votes":                 # votes streamed in (add_votes), in log order
            for name, comp in fam.comps.items():
                m = mats.get(name)
                if comp.votes.shape[1] and m is not None and m.shape[1] == comp.votes.shape[1]:
                    fam.add_votes(name, o[1], m[o[1]])
        else:
            raise ValueError(f"run {rt.rid}: operation {o[0]!r} in a shared-draws run's log")
    rt.family = fam
    rt.comps = fam.comps


def question_alpha(fam: ComparisonFamily, q: QuestionVerdict) -> float:
    """A question's ``alpha`` as the status and report state it: its Bonferroni share of the run's alpha (what
    its own confidence sequence runs at, as on the old path: alpha / Q, less the share kept for pool growth)
    times Holm's relief, 2 x its one-sided Holm level / its CS alpha (1 until some claim of the run is
    established, up to Q / (Q + 1) x 2 later; sampler/family.py)."""
    comp = fam.comps[q.criterion]
    relief = 2 * q.level / comp.cs_alpha
    return comp.reported_alpha if relief <= 1 + 1e-9 else min(1.0, comp.reported_alpha * relief)


def family_status(rt: RunRuntime, out: dict) -> None:
    """Fill a run's status dict (status.status_of's shape, docs/api.md) from the family's verdicts: each
    question's estimate, interval and decision are read at its Holm level (``question_alpha``). The top-level
    fields are the overall question's, as on the old path; the run's alpha (the bound on P(any verdict of the
    run is wrong)) is stated in ``alpha_split``."""
    fam = rt.family
    assert fam is not None
    fs = fam.status()
    if len(fs.questions) > 1:     # one question: nothing is split (as on the old path)
        out["multiplicity"], out["alpha_split"] = fs.multiplicity, fs.alpha_split
    out["finished"] = fs.finished
    by_name: dict[str, dict] = {}
    for q in fs.questions:
        entry = {"estimate": q.estimate, "interval": [q.lower, q.upper], "alpha": question_alpha(fam, q),
                 "decision": q.decision.value}
        if q.slice is None:
            s = fam.comps[q.criterion].status()
            d = {"labels": s.labels, **entry, "method": s.method, "pending": s.pending,
                 "pool_version": s.pool_version, "slices": {}}
            by_name[q.criterion] = d
        else:
            by_name[q.criterion]["slices"][q.slice] = {"n_pairs": q.n_items, "labels": q.labels, **entry}
    for name, d in by_name.items():
        if name == OVERALL:
            out.update(d)
            out["pending"] = len(fam.pending_items())
            out["progress"]["labels"] = d["labels"]
        else:
            out["criteria"][name] = d
