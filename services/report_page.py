"""GET /v1/runs/{id}/report: the run's Comparisons rendered by services.report (one self-contained HTML file)."""

from __future__ import annotations

from typing import Any

from services.runs import OVERALL, RunService


class _LazyPairs:
    """pairs[i] fetched from the store on demand (the report only shows a few labelled examples)."""

    def __init__(self, runs: RunService, rid: str, n: int):
        self.runs, self.rid, self.n = runs, rid, n

    def __getitem__(self, i: int) -> dict:
        return self.runs.store.get_pair(self.rid, int(i)) or {"id": str(i)}

    def __len__(self) -> int:
        return self.n


def _model_name(spec: Any, default: str) -> str:
    if isinstance(spec, dict):
        return str(spec.get("name") or spec.get("preset") or spec.get("model") or spec.get("path") or default)
    return default


def report_html(runs: RunService, rid: str) -> str:
    """The report of run ``rid``, rendered by the replica that owns the run (RunService.route)."""
    return runs.route("report_html", rid)


def render_owned(runs: RunService, rt: Any) -> str:
    """Render an owned run's report. The run's lock is held only to copy its comparisons (milliseconds);
    the rendering (its baseline simulations take seconds) runs on the copy, so labels never wait for it."""
    import copy

    from sampler.slices import alpha_split_text
    from services.report import ReportData, render_report, report_data_from_comparison

    rid = rt.rid
    with rt.lock:
        meta = copy.deepcopy(rt.meta)
        ov = rt.comps.get(OVERALL)
        if ov is None:
            st = runs._status(rt)
        else:
            # judge votes are never changed in place (add_items makes a new matrix): share them, copy the rest
            comps = {name: copy.deepcopy(c, memo={id(c.votes): c.votes}) for name, c in rt.comps.items()}
            n_pairs, n_ann, n_people, required = len(rt.pair_ids), rt.n_annotations, len(rt.per_annotator), \
                rt.required
    if ov is None:
        data = ReportData(run_id=rid, name=meta["name"], decision="running", estimate=0.5, lower=0.0,
                          upper=1.0, alpha=meta["alpha"], margin=meta["margin"], method=meta.get("method") or "",
                          n_pairs=st["n_pairs"], labels=0, votes=st["votes"], budget=meta["budget"],
                          notes=[f"run status: {meta['status']} (no comparison yet)"])
        return render_report(data)
    gen = meta.get("generate") or {}
    crits = {c: comps[c] for c in meta.get("criteria") or [] if c in comps}
    data = report_data_from_comparison(
        comps[OVERALL], run_id=rid, name=meta["name"], base_model=_model_name(gen.get("base"), "base"),
        tuned_model=_model_name(gen.get("tuned"), "tuned"), judge_names=meta["judge_names"] or None,
        pairs=_LazyPairs(runs, rid, n_pairs), criteria=crits or None,
        alpha_split=(alpha_split_text(meta["alpha"], len(meta["slices"]), 1 + len(crits)) if meta.get("slices")
                     else f"Bonferroni over {1 + len(crits)} comparisons" if crits else None),
        notes=[f"annotations: {n_ann} from {n_people} annotators; labels per pair: {required}"])
    return render_report(data)
