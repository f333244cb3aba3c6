"""Carried calibration: a new run starts from the judge calibration learnt on earlier runs (POST /v1/runs
``calibration_from``), so a comparison on the same task with the same judges -- the next checkpoint of an
experiment, a re-run -- does not spend its first labels relearning how far to trust the judges.

Owns: reading the named runs' labelled pairs and judge votes from Redis, checking that they fit the new run
(same judges, same criteria), fitting one prior per comparison with ``sampler.calibration.prior_calibration``,
and the entry stored in the run's meta (``meta["calibration_prior"]``: the prior of each comparison, exact, and
what it is based on). ``RunPool.activate`` hands each comparison its prior; the comparison's own snapshot
carries it from then on (``Comparison.to_dict``), so a reload is exact.

Validity: the prior is a function of *other* runs' labels and votes, read once when the run is created and
never changed after, so it is fixed before the new run's first draw and every prediction and bet of the new
run stays predictable (docs/statistics.md, "Carried calibration").
"""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any

import numpy as np

from tiebreak.sampler.calibration import PRIOR_PENALTY, JudgeCalibration, prior_calibration
from tiebreak.services.errors import BadInput
from tiebreak.services.store import RedisStore

FIELD = "calibration_from"
OVERALL = "overall"   # as services.runs.model.OVERALL (not imported: model imports the sampler engine only)


def carried_prior(store: RedisStore, spec: dict, meta: dict) -> dict | None:
    """The ``calibration_prior`` entry of a new run's meta, or None when ``spec`` names no runs.

    ``meta`` is the new run's (judge_names and criteria already set). Raises BadInput (422) naming
    ``calibration_from`` when a named run does not exist (422, not 404: the request's body is at fault, not its
    URL), uses other judges or criteria, or has no labelled pair with judge votes."""
    sources = list(spec.get(FIELD) or [])
    if not sources:
        return None
    if len(set(sources)) != len(sources):
        raise BadInput("calibration_from names a run twice; name each run once", FIELD)
    names = list(meta.get("judge_names") or [])
    if not names:
        raise BadInput("calibration_from carries a judge calibration, and this run has no judges: name the "
                       "same judges as the runs it comes from, or drop calibration_from", FIELD)
    if spec.get("method") == "classical":
        raise BadInput("method 'classical' uses no judge votes, so a carried calibration has nothing to do: "
                       "use method 'ppi' or 'active', or drop calibration_from", FIELD)
    criteria = list(meta.get("criteria") or [])
    rows: dict[str, tuple[list[list[float]], list[float], dict[str, int]]] = {
        c: ([], [], {}) for c in [OVERALL, *criteria]}
    groups: dict[str, list[int]] = {c: [] for c in rows}  # which named run each labelled pair comes from
    for k, rid in enumerate(sources):
        src = store.get_meta(rid) if isinstance(rid, str) else None
        if src is None:
            raise BadInput(f"run {rid!r} named in calibration_from does not exist: name runs of this service "
                           "(GET /v1/runs lists them)", f"{FIELD}.{k}")
        theirs = list(src.get("judge_names") or [])
        if sorted(theirs) != sorted(names):
            raise BadInput(f"run {rid!r} was judged by {theirs or 'no judges'}, this run by {names}: a "
                           "calibration carries only between runs with the same judges; name runs with these "
                           "judges or give this run theirs", f"{FIELD}.{k}")
        if sorted(src.get("criteria") or []) != sorted(criteria):
            raise BadInput(f"run {rid!r} has criteria {src.get('criteria') or []}, this run {criteria}: "
                           "give this run the same criteria, or name runs that have them", f"{FIELD}.{k}")
        order = [theirs.index(n) for n in names]          # the source's vote columns in this run's order
        labelled = _labelled_pairs(store, rid, int(src.get("labels_per_pair") or 1))
        votes = store.all_votes(rid)
        for c, (x, y, per_run) in rows.items():
            for idx, ys in sorted(labelled.items()):   # pair order, whatever order Redis lists them in
                v = (votes.get(idx) or {}).get(c)
                label = ys.get(c)
                if v is None or label is None:
                    continue
                x.append([math.nan if v[j] is None else float(v[j]) for j in order])
                y.append(label)
                groups[c].append(k)
                per_run[rid] = per_run.get(rid, 0) + 1
        if not rows[OVERALL][2].get(rid):
            raise BadInput(f"run {rid!r} has no labelled pair with judge votes yet, so there is no calibration "
                           "to carry from it: label some of its pairs first, or leave it out", f"{FIELD}.{k}")
    comparisons: dict[str, dict] = {}
    not_carried: dict[str, str] = {}
    for c, (x, y, per_run) in rows.items():
        if not y:
            not_carried[c] = "the named runs have no labelled pair with judge votes for this criterion"
            continue
        # one comparison per named run: the slopes are fitted within runs (sampler.calibration.prior_calibration)
        cal = prior_calibration(np.asarray(x, dtype=float).reshape(len(y), len(names)), np.asarray(y),
                                groups=np.asarray(groups[c]))
        comparisons[c] = {"labels": len(y), "labels_by_run": per_run, "calibration": asdict(cal)}
    return {"from": sources, "judges": names, "comparisons": comparisons, "not_carried": not_carried}


def _labelled_pairs(store: RedisStore, rid: str, required: int) -> dict[int, dict[str, float]]:
    """Each pair's final label per comparison (the mean of its annotators' verdicts, once it has ``required``
    of them, as the run itself feeds its comparisons: services.runs.model.feed)."""
    by_pair: dict[int, list[dict]] = {}
    for idx, _ann, rec in store.load_labels(rid):
        by_pair.setdefault(idx, []).append(rec)
    out: dict[int, dict[str, float]] = {}
    for idx, recs in by_pair.items():
        final: dict[str, float] = {}
        if len(recs) >= required:
            final[OVERALL] = float(sum(r["y"] for r in recs) / len(recs))
        crit: dict[str, list[float]] = {}
        for r in recs:
            for c, v in (r.get("criteria") or {}).items():
                if v is not None:
                    crit.setdefault(c, []).append(float(v))
        for c, vs in crit.items():
            if len(vs) >= required:
                final[c] = sum(vs) / len(vs)
        if final:
            out[idx] = final
    return out


def prior_for(meta: dict, comparison: str) -> JudgeCalibration | None:
    """The carried prior of one comparison of a run (None: none carried)."""
    entry = ((meta.get("calibration_prior") or {}).get("comparisons") or {}).get(comparison)
    if entry is None:
        return None
    return JudgeCalibration.from_dict(entry["calibration"])


def prior_summary(meta: dict) -> dict[str, Any] | None:
    """What a run's status shows of its carried calibration: the runs it comes from and, per comparison, the
    labels it is based on and the variance ratio it predicts (labels over residuals: what a label is worth
    with these judges, before this run's own labels refine it)."""
    entry = meta.get("calibration_prior")
    if not entry:
        return None
    comps = {}
    for c, e in entry["comparisons"].items():
        cal = prior_for(meta, c)
        comps[c] = {"labels": e["labels"], "labels_by_run": dict(e["labels_by_run"]),
                    "predicted_variance_ratio": cal.variance_ratio if cal is not None else 1.0,
                    "prior_penalty": cal.prior_penalty if cal is not None else PRIOR_PENALTY}
    overall = entry["comparisons"].get(OVERALL) or {}
    return {"from": list(entry["from"]), "labels": int(overall.get("labels", 0)), "comparisons": comps,
            "not_carried": dict(entry.get("not_carried") or {})}
