# Over 400 lines: the report's data model, its two SVG charts and the page are one self-contained unit.
"""The HTML report of one experiment (the training-run view): ONE self-contained file, like the run report
(inline CSS and SVG, no scripts, no external URLs, every user-supplied string escaped).

``render_experiment_report(data)`` is a pure function of a small pydantic value, ``ExperimentReportData``; build
that value with ``experiment_report_data(service, exp_id)`` from a ``services.experiments.ExperimentService``
(the HTTP service's, or the in-process one of the ladder replay), which reads only its public methods.

The picture, per checkpoint in training order:

* the estimate θ̂ and the anytime-valid interval of θ = P(checkpoint preferred) against the base (circle) and
  against the best checkpoint so far (diamond; absent while the best was still the base, when the comparison
  with the base *is* the comparison with the best), on one axis with ½ (no difference) and the ±margin band;
  colour = that comparison's decision;
* the checkpoint's verdict (its comparison with the best so far), the α_k it was given (α-spending, split
  between its comparisons), its human labels and the running total;
* the best checkpoint (marked), and when and why the stop signal fired: the first checkpoint after whose
  verdict the signal rule said stop (the rule re-evaluated on the checkpoints up to each one), with the reason;
* relative links to each comparison's own run report.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, Field

from tiebreak.sampler.decision import Decision
from tiebreak.services.experiments.signal import ComparisonView
from tiebreak.services.report import _COLORS, _CSS, _badge, _conf, _e, _f


class ComparisonRow(BaseModel):
    """One comparison run of a checkpoint (a GET /v1/runs/{id} subset)."""

    run_id: str = ""
    against: str = "base"                        # the reference side: "base" or a checkpoint name
    decision: str = Decision.RUNNING.value
    estimate: float = 0.5
    lower: float = 0.0
    upper: float = 1.0
    labels: int = 0
    alpha: float = 0.05                          # this run's confidence level is 1 - alpha
    href: str | None = None                      # relative link to the run's report


class CheckpointRow(BaseModel):
    checkpoint: str
    index: int                                   # k, from 1, in submission (training) order
    alpha: float                                 # α_k spent on this checkpoint (all its comparisons together)
    status: str = "ready"                        # ready | generating | failed (outputs not generated yet / failed)
    vs_base: ComparisonRow
    vs_best: ComparisonRow | None = None         # None: the best was the base when it arrived
    decision: str = Decision.RUNNING.value       # its verdict against the best so far
    labels: int = 0                              # human labels of its comparisons together
    calibration_from: list[str] = Field(default_factory=list)  # earlier runs whose judge calibration it carried


class ExperimentReportData(BaseModel):
    experiment: str = ""
    name: str = "experiment"
    alpha: float = 0.05
    margin: float = 0.0
    patience: int = 2
    target_margin: float | None = None
    budget: int | None = None                    # the experiment's label budget (stop rule "budget")
    budget_per_checkpoint: int | None = None
    checkpoints: list[CheckpointRow] = Field(default_factory=list)
    stop: bool = False
    reason: str | None = None
    message: str = ""
    best_checkpoint: str | None = None
    stop_checkpoint: str | None = None           # the checkpoint whose verdict made the signal say stop first
    stop_message: str | None = None              # the signal's message at that moment
    labels: int = 0
    generated_at: str | None = None
    notes: list[str] = Field(default_factory=list)


# ------------------------------------------------------------------------------------- from a service
def api_run_href(run_id: str) -> str:
    """The run report's address relative to /v1/experiments/{exp}/report (i.e. /v1/runs/{id}/report)."""
    return f"../../runs/{run_id}/report"


def file_run_href(run_id: str) -> str:
    """The file `tiebreak report RUN_ID` writes, in the same folder as the experiment report."""
    return f"tiebreak-report-{run_id}.html"


def _row(view: ComparisonView, href: Callable[[str], str] | None) -> ComparisonRow:
    """The signal's view of one comparison (its ``to_dict``; per-slice verdicts are not shown here), linked."""
    row = {k: v for k, v in view.to_dict().items() if k != "slices"}
    return ComparisonRow(**row, href=href(view.run_id) if href and view.run_id else None)


def experiment_report_data(service: Any, exp_id: str, *, run_href: Callable[[str], str] | None = api_run_href,
                           notes: list[str] | None = None) -> ExperimentReportData:
    """The report's value for experiment ``exp_id`` of an ``ExperimentService`` (raises its NotFound).

    When the stop signal fired is found by re-evaluating the experiment's ``SignalRule`` on the first k
    checkpoints for k = 1, 2, ...: the first k that says stop names the checkpoint whose verdict triggered it.
    """
    rec = service.get(exp_id)
    verdicts = sorted(service.verdicts(rec), key=lambda v: v.index)
    rule = service.rule(rec)
    sig = rule.evaluate(verdicts)
    stop_at, stop_msg = None, None
    for k in range(1, len(verdicts) + 1):
        s = rule.evaluate(verdicts[:k])
        if s.stop:
            stop_at, stop_msg = verdicts[k - 1].checkpoint, s.message
            break
    status = {c["checkpoint"]: c.get("status", "ready") for c in rec["checkpoints"]}
    carried = {c["checkpoint"]: list(c.get("calibration_from") or []) for c in rec["checkpoints"]}
    rows = []
    for v in verdicts:
        best = _row(v.vs_best, run_href) if v.vs_best is not None else None
        rows.append(CheckpointRow(
            checkpoint=v.checkpoint, index=v.index, alpha=v.alpha, status=status.get(v.checkpoint, "ready"),
            vs_base=_row(v.vs_base, run_href), vs_best=best, decision=v.decision,
            labels=v.vs_base.labels + (v.vs_best.labels if v.vs_best is not None else 0),
            calibration_from=carried.get(v.checkpoint, [])))
    return ExperimentReportData(
        experiment=exp_id, name=rec["name"], alpha=rec["alpha"], margin=rec["margin"],
        patience=rule.patience, target_margin=rule.target_margin, budget=rule.budget,
        budget_per_checkpoint=rec.get("budget_per_checkpoint"), checkpoints=rows, stop=sig.stop,
        reason=sig.reason, message=sig.message, best_checkpoint=sig.best_checkpoint, stop_checkpoint=stop_at,
        stop_message=stop_msg, labels=sig.labels, notes=list(notes or []))


# ---------------------------------------------------------------------------------------------- chart
def _y_range(d: ExperimentReportData) -> tuple[float, float]:
    """The θ axis: every interval, ½ and the margin band, padded and rounded to 0.05; within [0, 1]."""
    lo, hi = 0.5 - d.margin, 0.5 + d.margin
    for c in d.checkpoints:
        for r in (c.vs_base, c.vs_best):
            if r is not None and r.run_id:
                lo, hi = min(lo, r.lower), max(hi, r.upper)
    pad = max(0.02, 0.08 * (hi - lo))
    lo, hi = max(0.0, lo - pad), min(1.0, hi + pad)
    return (math.floor(lo * 20) / 20, min(1.0, math.ceil(hi * 20) / 20))


def _ticks(lo: float, hi: float) -> list[float]:
    span = hi - lo
    step = next(s for s in (0.01, 0.02, 0.05, 0.1, 0.2, 0.25) if span / s <= 8)
    k = math.ceil(lo / step - 1e-9)
    out = []
    while k * step <= hi + 1e-9:
        out.append(round(k * step, 4))
        k += 1
    return out


def checkpoints_svg(d: ExperimentReportData, width: int = 820, height: int = 340) -> str:
    """Intervals and estimates per checkpoint: vs the base (circle) and vs the best so far (diamond)."""
    n = len(d.checkpoints)
    rotate = n > 6 or any(len(c.checkpoint) > 14 for c in d.checkpoints)
    ml, mr, mt = 56, 16, 26
    mb = 92 if rotate else 48
    pw, ph = width - ml - mr, height - mt - mb
    lo, hi = _y_range(d)
    slot = pw / max(n, 1)

    def y(v: float) -> float:
        return mt + ph * (hi - min(max(v, lo), hi)) / (hi - lo)

    p = [f'<svg class="exp" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
         'aria-label="confidence intervals per checkpoint">',
         f'<rect x="{ml}" y="{mt}" width="{pw}" height="{ph}" fill="#fbfbfc" stroke="#d0d7de"/>']
    for v in _ticks(lo, hi):
        p.append(f'<line x1="{ml}" x2="{ml + pw}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#eaeef2"/>')
        p.append(f'<text x="{ml - 6}" y="{y(v) + 4:.1f}" text-anchor="end" class="tick">{v:g}</text>')
    if d.margin > 0:
        p.append(f'<rect class="margin" x="{ml}" y="{y(0.5 + d.margin):.1f}" width="{pw}" '
                 f'height="{y(0.5 - d.margin) - y(0.5 + d.margin):.1f}" fill="#1f5fbf" opacity="0.08"/>')
        for v in (0.5 - d.margin, 0.5 + d.margin):
            p.append(f'<line x1="{ml}" x2="{ml + pw}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#1f5fbf" '
                     'stroke-dasharray="2 3" opacity="0.6"/>')
        p.append(f'<text x="{ml + pw - 4}" y="{y(0.5 + d.margin) - 4:.1f}" text-anchor="end" class="tick">'
                 f'±{d.margin:g}: equivalent</text>')
    p.append(f'<line class="half" x1="{ml}" x2="{ml + pw}" y1="{y(0.5):.1f}" y2="{y(0.5):.1f}" stroke="#24292f" '
             'stroke-dasharray="6 4"/>')
    p.append(f'<text x="{ml + 4}" y="{y(0.5) - 5:.1f}" class="tick">½ = no difference</text>')
    for i, c in enumerate(d.checkpoints):
        cx = ml + slot * (i + 0.5)
        if i:
            p.append(f'<line x1="{ml + slot * i:.1f}" x2="{ml + slot * i:.1f}" y1="{mt}" y2="{mt + ph}" '
                     'stroke="#f0f2f4"/>')
        pairs = [("base", c.vs_base, cx - min(12.0, slot * 0.18) if c.vs_best is not None else cx)]
        if c.vs_best is not None:
            pairs.append(("best", c.vs_best, cx + min(12.0, slot * 0.18)))
        for kind, r, x in pairs:
            if not r.run_id:
                p.append(f'<text x="{cx:.1f}" y="{mt + ph / 2:.1f}" text-anchor="middle" class="tick">'
                         f'{_e(c.status)}</text>')
                continue
            col = _COLORS.get(r.decision, "#57606a")
            p.append(f'<line class="iv iv-{kind}" data-checkpoint="{_e(c.checkpoint)}" data-decision="{_e(r.decision)}" '
                     f'x1="{x:.1f}" x2="{x:.1f}" y1="{y(r.upper):.1f}" y2="{y(r.lower):.1f}" stroke="{col}" '
                     f'stroke-width="{6 if kind == "base" else 4}" stroke-linecap="butt" opacity="0.45"/>')
            for b in (r.lower, r.upper):
                p.append(f'<line x1="{x - 6:.1f}" x2="{x + 6:.1f}" y1="{y(b):.1f}" y2="{y(b):.1f}" stroke="{col}" '
                         'stroke-width="1.5"/>')
            if kind == "base":
                p.append(f'<circle class="est est-base" cx="{x:.1f}" cy="{y(r.estimate):.1f}" r="5" fill="{col}">'
                         f'<title>{_e(c.checkpoint)} vs base: {_e(r.decision)}, θ̂ {r.estimate:.3f}</title></circle>')
            else:
                ey = y(r.estimate)
                p.append(f'<polygon class="est est-best" points="{x:.1f},{ey - 6:.1f} {x + 6:.1f},{ey:.1f} '
                         f'{x:.1f},{ey + 6:.1f} {x - 6:.1f},{ey:.1f}" fill="{col}">'
                         f'<title>{_e(c.checkpoint)} vs {_e(r.against)}: {_e(r.decision)}, θ̂ {r.estimate:.3f}'
                         '</title></polygon>')
        if c.checkpoint == d.best_checkpoint:
            p.append(f'<text class="best" x="{cx:.1f}" y="{mt - 8}" text-anchor="middle" '
                     'fill="#1a7f37" font-weight="600">★ best</text>')
        if c.checkpoint == d.stop_checkpoint:
            sx = ml + slot * (i + 1)
            p.append(f'<line class="stopline" x1="{sx:.1f}" x2="{sx:.1f}" y1="{mt}" y2="{mt + ph}" stroke="#c0362c" '
                     'stroke-width="2" stroke-dasharray="5 3"/>')
            p.append(f'<text x="{sx - 4:.1f}" y="{mt + 14}" text-anchor="end" class="ann" fill="#c0362c">'
                     f'stop: {_e(d.reason if d.stop else "fired")}</text>')
        ly = mt + ph + 16
        name = _e(c.checkpoint if len(c.checkpoint) <= 28 else c.checkpoint[:27] + "…")
        if rotate:
            p.append(f'<text x="{cx:.1f}" y="{ly}" text-anchor="end" class="axis" '
                     f'transform="rotate(-35 {cx:.1f} {ly})">{name}</text>')
        else:
            p.append(f'<text x="{cx:.1f}" y="{ly}" text-anchor="middle" class="axis">{name}</text>')
            p.append(f'<text x="{cx:.1f}" y="{ly + 14}" text-anchor="middle" class="tick">α {c.alpha:.2g}</text>')
    if not d.checkpoints:
        p.append(f'<text x="{ml + pw / 2}" y="{mt + ph / 2}" text-anchor="middle" class="tick">'
                 'no checkpoints yet</text>')
    p.append(f'<text x="14" y="{mt + ph / 2}" text-anchor="middle" class="axis" '
             f'transform="rotate(-90 14 {mt + ph / 2})">P(checkpoint preferred)</text>')
    p.append("</svg>")
    return "".join(p)


def labels_svg(d: ExperimentReportData, width: int = 820) -> str:
    """Human labels per checkpoint (vs base + vs best stacked) and the running total."""
    ml, mr, bh, gap = 200, 90, 16, 6
    h = 8 + len(d.checkpoints) * (bh + gap)
    top = max([c.labels for c in d.checkpoints] + [1])
    pw = width - ml - mr
    out = [f'<svg class="labels" viewBox="0 0 {width} {h}" width="{width}" height="{h}" role="img" '
           'aria-label="labels per checkpoint">']
    total = 0
    for i, c in enumerate(d.checkpoints):
        yy = 4 + i * (bh + gap)
        total += c.labels
        name = c.checkpoint if len(c.checkpoint) <= 26 else c.checkpoint[:25] + "…"
        out.append(f'<text x="{ml - 8}" y="{yy + bh * 0.8:.1f}" text-anchor="end" class="axis">{_e(name)}</text>')
        x = float(ml)
        for r, op in ((c.vs_base, 0.85), (c.vs_best, 0.5)):
            if r is None or not r.labels:
                continue
            w = pw * r.labels / top
            out.append(f'<rect x="{x:.1f}" y="{yy}" width="{w:.1f}" height="{bh}" fill="#57606a" opacity="{op}">'
                       f'<title>vs {_e(r.against)}: {r.labels} labels</title></rect>')
            x += w
        out.append(f'<text x="{x + 6:.1f}" y="{yy + bh * 0.8:.1f}" class="tick">{c.labels} (total {total})</text>')
    out.append("</svg>")
    return "".join(out)


# --------------------------------------------------------------------------------------------- render
_EXTRA_CSS = """
body{max-width:900px}
.stop{border-color:#c0362c;background:#fff5f4}.go{border-color:#1a7f37;background:#f4fbf6}
svg text.best{font-size:12px}
td a{color:#1f5fbf}td.n{white-space:nowrap}
table.cks th,table.cks td{padding:4px 4px;font-size:12px}
td.runs{font-size:11px;word-break:break-all;max-width:84px}
.legend{font-size:12px;color:#57606a;margin:4px 0 0}
.dot{display:inline-block;width:9px;height:9px;border-radius:50%;background:#57606a;vertical-align:middle}
.dia{display:inline-block;width:8px;height:8px;background:#57606a;transform:rotate(45deg);vertical-align:middle}
"""


def _legend() -> str:
    return " &nbsp;".join(f'<span class="dot" style="background:{_COLORS[k]}"></span> {k}'
                          for k in (*(d for d in Decision if d.final), Decision.RUNNING))


def _cmp_cells(r: ComparisonRow | None, against: bool) -> str:
    if r is None:
        return '<td colspan=4 class="note">= vs base (the best was the base)</td>'
    return (("<td>" + _e(r.against) + "</td>" if against else "") + f"<td>{_badge(r.decision)}</td>"
            f"<td class=n>{_f(r.estimate)} ({_f(r.lower)}, {_f(r.upper)})</td><td class=n>{r.labels}</td>")


def _run_links(c: CheckpointRow) -> str:
    out = []
    for what, r in (("vs base", c.vs_base), ("vs best", c.vs_best)):
        if r is None or not r.run_id:
            continue
        if r.href:
            out.append(f'<a href="{_e(r.href)}" title="{_e(r.run_id)}">{what}</a>')
        else:
            out.append(f'<span class="note" title="{_e(what)}">{_e(r.run_id)}</span>')
    return "<br>".join(out) or "—"


def _carried_note(c: CheckpointRow) -> str:
    """Which earlier runs' judge calibration the checkpoint's runs started from (carry_calibration)."""
    n = len(c.calibration_from)
    if not n:
        return ""
    return (f'<br><span class="note" title="{_e(", ".join(c.calibration_from))}">judge calibration carried from '
            f'{n} earlier run{"s" if n != 1 else ""}</span>')


def _table(d: ExperimentReportData) -> str:
    rows, total = [], 0
    for c in d.checkpoints:
        total += c.labels
        star = " ★" if c.checkpoint == d.best_checkpoint else ""
        stop = ' <span class="badge" style="background:#c0362c">stop</span>' if c.checkpoint == d.stop_checkpoint else ""
        rows.append(
            f"<tr><td class=n>{c.index}</td><td><b>{_e(c.checkpoint)}</b>{star}{stop}"
            f"{'' if c.status == 'ready' else ' (' + _e(c.status) + ')'}{_carried_note(c)}</td>"
            f"<td class=n>{c.alpha:.4f}</td>{_cmp_cells(c.vs_base, False)}"
            f"{_cmp_cells(c.vs_best, True)}<td class=n>{c.labels}</td><td class=n>{total}</td>"
            f"<td class=runs>{_run_links(c)}</td></tr>")
    return ("<table class=cks><tr><th rowspan=2>k</th><th rowspan=2>checkpoint</th><th rowspan=2>α<sub>k</sub></th>"
            "<th colspan=3>vs base</th><th colspan=4>vs the best so far</th><th colspan=2>labels</th>"
            "<th rowspan=2>run reports</th></tr>"
            "<tr><th>decision</th><th>θ̂ (interval)</th><th>labels</th><th>best</th><th>decision</th>"
            "<th>θ̂ (interval)</th><th>labels</th><th>checkpoint</th><th>total</th></tr>"
            + "".join(rows) + "</table>")


def signal_sentence(d: ExperimentReportData) -> str:
    if d.stop:
        return f"Stop training ({d.reason}): {d.message}."
    return f"Keep training: no stop rule holds ({d.message})."


def fired_sentence(d: ExperimentReportData) -> str:
    """When the signal first said stop: after which checkpoint's verdict, and why at that moment."""
    if d.stop_checkpoint is None:
        return "The stop signal has not fired."
    lifted = "" if d.stop else " A later verdict lifted it."
    return f"The stop signal first fired once the verdict of {d.stop_checkpoint} was in: {d.stop_message}.{lifted}"


def best_sentence(d: ExperimentReportData) -> str:
    if d.best_checkpoint is None:
        return "No checkpoint has been shown better than the base (and than every earlier best) yet."
    chain: list[str] = []
    by_name = {c.checkpoint: c for c in d.checkpoints}
    name: str | None = d.best_checkpoint
    while name is not None and name in by_name and len(chain) < len(by_name):
        c = by_name[name]
        ref = c.vs_best.against if c.vs_best is not None else "base"
        chain.append(f"{name} is better than {'the base' if ref == 'base' else ref}")
        name = None if ref == "base" else ref
    return "Best checkpoint: " + d.best_checkpoint + " (" + "; ".join(chain) + ")."


def rule_sentence(d: ExperimentReportData) -> str:
    parts = [f"regression / plateau after {d.patience} finished checkpoint(s) not better than the best"]
    if d.target_margin is not None:
        parts.insert(0, f"target: a lower bound vs the base above {0.5 + d.target_margin:.3f}")
    if d.budget is not None:
        parts.append(f"budget: {d.budget} human labels")
    return "Stop rules, in priority order: " + "; ".join(parts) + "."


def guarantee_sentence(d: ExperimentReportData) -> str:
    return (f"Guarantee: every better / worse verdict on this page together is wrong with probability at most "
            f"{100 * d.alpha:.3g}%, however many checkpoints arrive and whenever each comparison stopped: "
            f"checkpoint k gets α_k = α·6/(π²k²) (Σ α_k = α = {d.alpha:g}), split equally between its "
            "comparisons, each an anytime-valid confidence sequence at its own level.")


def render_experiment_report(data: ExperimentReportData) -> str:
    """The whole experiment report as one self-contained HTML string."""
    d = data
    when = d.generated_at or datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    margin = f" · margin ±{d.margin:g}" if d.margin > 0 else ""
    bpc = f" of {d.budget_per_checkpoint} per checkpoint" if d.budget_per_checkpoint else ""
    kv = (f'<div class="kv"><div><b>{len(d.checkpoints)}</b><span>checkpoints</span></div>'
          f"<div><b>{_e(d.best_checkpoint or 'base')}</b><span>best so far</span></div>"
          f"<div><b>{d.labels}</b><span>human labels in total{_e(bpc)}</span></div>"
          f"<div><b>{'stop' if d.stop else 'keep going'}</b><span>signal"
          f"{(': ' + _e(d.reason)) if d.reason else ''}</span></div></div>")
    notes = "".join(f'<p class="note">{_e(n)}</p>' for n in d.notes)
    cls = "stop" if d.stop else "go"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e("tiebreak · " + d.name)}</title><style>{_CSS}{_EXTRA_CSS}</style></head><body>
<h1>{_e(d.name)}</h1>
<div class="sub">{("experiment " + _e(d.experiment) + " · ") if d.experiment else ""}α = {d.alpha:.4g}{margin} ·
 patience {d.patience} · {_e(when)}</div>
<div class="verdict {cls}"><div class="big">{_e(signal_sentence(d))}</div>
<div class="guarantee">{_e(fired_sentence(d))}</div>
<div class="guarantee">{_e(best_sentence(d))}</div>
<div class="guarantee">{_e(guarantee_sentence(d))}</div></div>
{kv}
<h2>Every checkpoint against the base and the best so far</h2>
{checkpoints_svg(d)}
<p class="legend"><span class="dot"></span> vs base &nbsp; <span class="dia"></span> vs the best checkpoint so far
 (drawn once some checkpoint beat the base) &nbsp; colour = decision: {_legend()}</p>
<p class="note">Each bar is the anytime-valid confidence sequence ({_conf(d.checkpoints[0].vs_base.alpha) if d.checkpoints
 else _conf(d.alpha)}% for the first checkpoint, narrower α later) for θ, the share of prompts on which humans prefer
 the checkpoint; the marker is the estimate. A comparison says better when its bar is wholly above ½, worse when
 wholly below{", equivalent when it lies inside the ±margin band" if d.margin > 0 else ""}.</p>
<h2>Verdicts, α and labels</h2>
{_table(d)}
<p class="note">{_e(rule_sentence(d))} The α<sub>k</sub> column is what checkpoint k spent, split between its
comparisons; “labels” counts the human labels its comparisons used, “total” the running sum.</p>
<h2>Human labels per checkpoint</h2>
{labels_svg(d)}
<p class="note">Dark: labels on the comparison with the base; light: on the comparison with the best so far.</p>
{notes}
<footer>Generated by tiebreak. θ is the preference rate on this experiment's prompt set, a tie counting ½; it says
nothing about prompts outside it.</footer>
</body></html>
"""
