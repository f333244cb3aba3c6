"""GET /v1/runs/{id}/report: the run's Comparisons rendered by services.report (one self-contained HTML file)."""

from __future__ import annotations

from typing import Any

from services.runs import OVERALL, RunService


class _LazyPairs:
    """pairs[i] fetched from the store on demand (the report only shows a few labelled examples)."""

    def __init__(self, runs: RunService, rid: str):
        self.runs, self.rid = runs, rid

    def __getitem__(self, i: int) -> dict:
        return self.runs.store.get_pair(self.rid, int(i)) or {"id": str(i)}

    def __len__(self) -> int:
        return len(self.runs.runtime(self.rid).pair_ids)


def _model_name(spec: Any, default: str) -> str:
    if isinstance(spec, dict):
        return str(spec.get("name") or spec.get("preset") or spec.get("model") or spec.get("path") or default)
    return default


def report_html(runs: RunService, rid: str) -> str:
    from services.report import ReportData, render_report, report_data_from_comparison

    rt = runs.runtime(rid)
    with rt.lock:
        meta = rt.meta
        ov = rt.comps.get(OVERALL)
        if ov is None:
            st = runs.status(rid)
            data = ReportData(run_id=rid, name=meta["name"], decision="running", estimate=0.5, lower=0.0,
                              upper=1.0, alpha=meta["alpha"], margin=meta["margin"], method=meta.get("method") or "",
                              n_pairs=st["n_pairs"], labels=0, votes=st["votes"], budget=meta["budget"],
                              notes=[f"run status: {meta['status']} (no comparison yet)"])
            return render_report(data)
        gen = meta.get("generate") or {}
        crits = {c: rt.comps[c] for c in rt.criteria if c in rt.comps}
        data = report_data_from_comparison(
            ov, run_id=rid, name=meta["name"], base_model=_model_name(gen.get("base"), "base"),
            tuned_model=_model_name(gen.get("tuned"), "tuned"), judge_names=meta["judge_names"] or None,
            pairs=_LazyPairs(runs, rid), criteria=crits or None,
            alpha_split=f"Bonferroni over {1 + len(crits)} comparisons" if crits else None,
            notes=[f"annotations: {rt.n_annotations} from {len(rt.per_annotator)} annotators; "
                   f"labels per pair: {rt.required}"])
        return render_report(data)
