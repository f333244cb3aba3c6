"""GET /v1/runs/{id}/report: a copy of a run's comparisons (``services.runs.status.ReportCopy``) rendered by
services.report as one self-contained HTML file. Pure rendering: the copy is taken by ``RunService.report_html``
on the replica that owns the run, so nothing here touches a run's lock or its in-memory state."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tiebreak.services.runs.model import OVERALL
from tiebreak.services.runs.status import ReportCopy


class _LazyPairs:
    """pairs[i] fetched on demand (the report only shows a few labelled examples)."""

    def __init__(self, pair_of: Callable[[int], dict | None], n: int):
        self.pair_of, self.n = pair_of, n

    def __getitem__(self, i: int) -> dict:
        return self.pair_of(int(i)) or {"id": str(i)}

    def __len__(self) -> int:
        return self.n


def _model_name(spec: Any, default: str) -> str:
    if isinstance(spec, dict):
        return str(spec.get("name") or spec.get("preset") or spec.get("model") or spec.get("path") or default)
    return default


def render_run_report(run: ReportCopy, pair_of: Callable[[int], dict | None]) -> str:
    """The report of a run from its copy; ``pair_of(i)`` reads pair i (for the example table)."""
    from tiebreak.sampler.slices import alpha_split_text
    from tiebreak.services.report import JudgeWorthRow, ReportData, render_report, report_data_from_comparison
    from tiebreak.services.runs.judge_budget import judges_value_of

    meta, comps = run.meta, run.comps
    if OVERALL not in comps:
        data = ReportData(run_id=run.rid, name=meta["name"], decision="running", estimate=0.5, lower=0.0,
                          upper=1.0, alpha=meta["alpha"], margin=meta["margin"], method=meta.get("method") or "",
                          n_pairs=run.n_pairs, labels=0, votes=run.n_votes, budget=meta["budget"],
                          notes=[f"run status: {meta['status']} (no comparison yet)"])
        return render_report(data)
    gen = meta.get("generate") or {}
    crits = {c: comps[c] for c in meta.get("criteria") or [] if c in comps}
    data = report_data_from_comparison(
        comps[OVERALL], run_id=run.rid, name=meta["name"], base_model=_model_name(gen.get("base"), "base"),
        tuned_model=_model_name(gen.get("tuned"), "tuned"), judge_names=meta["judge_names"] or None,
        pairs=_LazyPairs(pair_of, run.n_pairs), criteria=crits or None,
        alpha_split=(alpha_split_text(meta["alpha"], len(meta["slices"]), 1 + len(crits)) if meta.get("slices")
                     else f"Bonferroni over {1 + len(crits)} comparisons" if crits else None),
        notes=[f"annotations: {run.n_annotations} from {run.n_annotators} annotators; labels per pair: "
               f"{run.labels_per_pair}"])
    if run.family is not None:
        data = _family_verdicts(data, run.family)
    worth = judges_value_of(meta, comps[OVERALL], run.n_votes, run.n_pairs)
    data.judge_worth = [JudgeWorthRow(name=name, **{k: v for k, v in w.items() if k in JudgeWorthRow.model_fields})
                        for name, w in worth.items()]
    return render_report(data)


def _family_verdicts(data: Any, fam: Any) -> Any:
    """A run on one draw sequence: every verdict, interval and the alpha split as the family gives them (Holm,
    services.runs.shared_draws.question_alpha)."""
    from tiebreak.services.report import CriterionVerdict, SliceVerdict
    from tiebreak.services.runs.shared_draws import question_alpha

    fs = fam.status()
    ov = fs.question(OVERALL)
    crit = [CriterionVerdict(criterion=q.criterion, decision=q.decision.value, estimate=q.estimate, lower=q.lower,
                             upper=q.upper, labels=q.labels, alpha=question_alpha(fam, q))
            for q in fs.questions if q.criterion != OVERALL and q.slice is None]
    slices = [SliceVerdict(slice=q.slice, n_pairs=q.n_items, decision=q.decision.value, estimate=q.estimate,
                           lower=q.lower, upper=q.upper, labels=q.labels, alpha=question_alpha(fam, q))
              for q in fs.questions if q.criterion == OVERALL and q.slice is not None]
    return data.model_copy(update={"decision": ov.decision.value, "estimate": ov.estimate, "lower": ov.lower,
                                   "upper": ov.upper, "alpha": question_alpha(fam, ov), "criteria": crit, "slices": slices,
                                   "alpha_split": fs.alpha_split if len(fs.questions) > 1 else None})
