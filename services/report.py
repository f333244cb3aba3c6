"""The HTML report of one run: ONE self-contained file (inline CSS and SVG, no scripts, no external URLs).

``render_report(data)`` is a pure function of a small pydantic value, ``ReportData``; it knows nothing of Redis,
FastAPI or Ray. Build the value with ``report_data_from_comparison`` (from a ``sampler.engine.Comparison`` plus
whatever the caller knows about pairs, judges and criteria) and, if you want the "labels saved" figure,
``uniform_baseline`` (a simulation of the labels-only, uniform-sampling test on the same pool).

The report shows: the verdict and the guarantee in one sentence, the confidence-sequence trajectory against
labels, per-criterion verdicts, labels used against the uniform-sampling baseline, judge agreement and bias
on the labelled pairs, and a few labelled pairs (prompt text escaped).

Over 400 lines: one page's data model, its SVG figures and its HTML sections, each section a short function;
split by page section it would scatter one template over several files.
"""

from __future__ import annotations

import html
import math
import warnings
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

import numpy as np
from pydantic import BaseModel, Field

from tiebreak.judges.evaluate import three_way_agreement
from tiebreak.sampler.decision import Decision


class PairsByIndex(Protocol):
    """What the report reads of the pairs: ``pairs[i]`` for a labelled pool index (a list of dicts, or a view
    that fetches each pair from the store on demand, services/report_page.py)."""

    def __getitem__(self, i: int, /) -> Mapping[str, Any]: ...


class JudgeRow(BaseModel):
    """Agreement and bias of one judge (or the calibrated ensemble) on the pairs humans labelled."""

    name: str
    n: int = 0                                   # labelled pairs with a vote from this judge
    decisive_agreement: float | None = None      # share of pairs where judge and human agree on the sign (ties out)
    three_way_agreement: float | None = None     # judges.evaluate.three_way_agreement (tie only at vote = 1/2)
    bias: float | None = None                    # mean(vote) - mean(label): > 0 = the judge favours the tuned model
    correlation: float | None = None             # Pearson correlation of vote and label
    mean_vote: float | None = None               # mean P(tuned better) over ALL pairs (the judges-only estimate)
    position_bias: float | None = None           # P(judge picks the response shown first), if known
    swap_inconsistency: float | None = None      # mean |P(order 1) - P(order 2)|, if known


class JudgeWorthRow(BaseModel):
    """What one judge (or the jury) was worth to the run: share of labels saved with an interval, and its cost."""

    name: str
    value: float                                 # share of label variance explained = share of labels saved
    interval: list[float]
    level: float = 0.9
    labels: int = 0                              # labelled pairs it is measured on
    labels_saved: float | None = 0.0
    labels_saved_interval: list[float | None] = Field(default_factory=list)
    cpu_s: float | None = None
    pairs_voted: int | None = None
    state: str | None = None
    stopped_by: str | None = None                # stopped-worthless: "trial" or "value"


class QuestionVerdict(BaseModel):
    """The verdict on one question besides the overall one (a criterion or a slice)."""

    decision: str
    estimate: float
    lower: float
    upper: float
    labels: int = 0
    alpha: float | None = None


class CriterionVerdict(QuestionVerdict):
    criterion: str


class SliceVerdict(QuestionVerdict):
    """One slice's verdict (sampler.slices): the preference rate on the slice's pairs."""

    slice: str
    n_pairs: int


class Baseline(BaseModel):
    """What the labels-only, uniform-sampling test would have needed on this pool (simulated)."""

    labels: float                                 # mean labels to a decision (or to the budget / pool end)
    runs: int = 0
    decided_share: float | None = None            # share of simulated runs that decided before the budget
    note: str = "labels-only sequential test, pairs drawn uniformly at random, same alpha and confidence sequence"


class ExamplePair(BaseModel):
    pair_id: str
    prompt: str
    base: str = ""
    tuned: str = ""
    human: float | None = None                   # Y: 1 tuned better, 0.5 tie, 0 base better
    judge: float | None = None                   # ensemble P(tuned better)


class ReportData(BaseModel):
    run_id: str = ""
    name: str = "comparison"
    base_model: str = "base"
    tuned_model: str = "tuned"
    decision: str = "running"
    estimate: float = 0.5
    lower: float = 0.0
    upper: float = 1.0
    alpha: float = 0.05
    margin: float = 0.0
    method: str = "active"
    n_pairs: int = 0
    labels: int = 0
    votes: int = 0
    budget: int | None = None
    trajectory: list[list[float]] = Field(default_factory=list)   # [labels, estimate, lower, upper] rows
    judges: list[JudgeRow] = Field(default_factory=list)
    judge_worth: list[JudgeWorthRow] = Field(default_factory=list)   # services/runs/judge_budget.py
    criteria: list[CriterionVerdict] = Field(default_factory=list)
    slices: list[SliceVerdict] = Field(default_factory=list)
    alpha_split: str | None = None               # how alpha was divided (e.g. "Bonferroni over 3 criteria")
    baseline: Baseline | None = None
    examples: list[ExamplePair] = Field(default_factory=list)
    generated_at: str | None = None
    notes: list[str] = Field(default_factory=list)


# --------------------------------------------------------------------------------------------- sentences
def _named(d: ReportData) -> bool:
    return not (d.base_model == "base" and d.tuned_model == "tuned")


def verdict_sentence(d: ReportData) -> str:
    t, b = (d.tuned_model, d.base_model) if _named(d) else ("The tuned model", "the base model")
    iv = f"({d.lower:.3f}, {d.upper:.3f})"
    if d.decision == "better":
        return f"{t} is better than {b}: humans prefer it on more than half of the pairs; the rate lies in {iv}."
    if d.decision == "worse":
        return f"{t} is worse than {b}: humans prefer it on less than half of the pairs; the rate lies in {iv}."
    if d.decision == "equivalent":
        return (f"{t} and {b} are equivalent within ±{d.margin:g}: the preference rate lies inside "
                f"({0.5 - d.margin:.3f}, {0.5 + d.margin:.3f}): it lies in {iv}.")
    if d.decision == "undecided":
        return f"Undecided: the labels ran out with the interval {iv} still containing ½."
    return f"Still running: the interval {iv} contains ½."


def guarantee_sentence(d: ReportData) -> str:
    return (f"Guarantee: the interval covers the true preference rate on these {d.n_pairs} pairs at every moment "
            f"with probability at least {_conf(d.alpha)}%, so a “better”, “worse” or “equivalent” verdict is wrong "
            f"at most {100 * d.alpha:.3g}% of the time, however early the run stopped — whatever the judges got "
            f"wrong; the judges only change how many labels it takes.")


# ---------------------------------------------------------------------------------------------- helpers
def _conf(alpha: float) -> str:
    """Confidence level in percent, short: 95, 98.33, 99.5."""
    return f"{100 * (1 - alpha):.4g}"


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _f(x: float | None, nd: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    return f"{x:.{nd}f}"


def _pct(x: float | None) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    return f"{100 * x:.0f}%"


def _clip_text(s: str, n: int) -> str:
    s = (s or "").strip()
    return s if len(s) <= n else s[: n - 1].rstrip() + "…"


_COLORS = {"better": "#1a7f37", "worse": "#c0362c", "equivalent": "#1f5fbf", "undecided": "#8a6d00",
           "running": "#57606a"}


def _badge(decision: str) -> str:
    c = _COLORS.get(decision, "#57606a")
    return f'<span class="badge" style="background:{c}">{_e(decision)}</span>'


# ---------------------------------------------------------------------------------------------- charts
def trajectory_svg(d: ReportData, width: int = 760, height: int = 300) -> str:
    """Interval (band) and estimate (line) against the number of human labels; ½ and ±margin as references."""
    rows = [r for r in d.trajectory if len(r) >= 4]
    ml, mr, mt, mb = 52, 16, 14, 40
    pw, ph = width - ml - mr, height - mt - mb
    xmax = max([r[0] for r in rows] + [1.0]) * 1.04   # room for the final interval to show
    if d.baseline is not None and d.baseline.labels > xmax:
        xmax = d.baseline.labels
    xmax = max(xmax, 1.0)

    def x(v: float) -> float:
        return ml + pw * v / xmax

    def y(v: float) -> float:
        return mt + ph * (1.0 - v)

    parts = [f'<svg class="traj" viewBox="0 0 {width} {height}" '
             f'width="{width}" height="{height}" role="img" aria-label="confidence interval against labels">']
    parts.append(f'<rect x="{ml}" y="{mt}" width="{pw}" height="{ph}" fill="#fbfbfc" stroke="#d0d7de"/>')
    for v in (0.0, 0.25, 0.5, 0.75, 1.0):
        parts.append(f'<line x1="{ml}" x2="{ml + pw}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#eaeef2"/>')
        parts.append(f'<text x="{ml - 6}" y="{y(v) + 4:.1f}" text-anchor="end" class="tick">{v:.2f}</text>')
    step = _nice_step(xmax)
    k = 0.0
    while k <= xmax + 1e-9:
        parts.append(f'<line x1="{x(k):.1f}" x2="{x(k):.1f}" y1="{mt + ph}" y2="{mt + ph + 4}" stroke="#8c959f"/>')
        parts.append(f'<text x="{x(k):.1f}" y="{mt + ph + 16}" text-anchor="middle" class="tick">{k:g}</text>')
        k += step
    if d.margin > 0:
        parts.append(f'<rect x="{ml}" y="{y(0.5 + d.margin):.1f}" width="{pw}" '
                     f'height="{y(0.5 - d.margin) - y(0.5 + d.margin):.1f}" fill="#1f5fbf" opacity="0.07"/>')
        for v in (0.5 - d.margin, 0.5 + d.margin):
            parts.append(f'<line x1="{ml}" x2="{ml + pw}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#1f5fbf" '
                         f'stroke-dasharray="2 3" opacity="0.6"/>')
    parts.append(f'<line x1="{ml}" x2="{ml + pw}" y1="{y(0.5):.1f}" y2="{y(0.5):.1f}" stroke="#24292f" '
                 f'stroke-dasharray="6 4"/>')
    parts.append(f'<text x="{ml + 4}" y="{y(0.5) - 5:.1f}" text-anchor="start" class="tick">½ = no difference'
                 '</text>')
    if rows:
        # step-shaped band: the interval holds until the next label arrives
        upper_pts, lower_pts = [], []
        for i, r in enumerate(rows):
            x0 = x(r[0])
            x1 = x(rows[i + 1][0]) if i + 1 < len(rows) else min(x0 + max(6.0, pw * 0.025), ml + pw)
            upper_pts += [(x0, y(r[3])), (x1, y(r[3]))]
            lower_pts += [(x0, y(r[2])), (x1, y(r[2]))]
        poly = " ".join(f"{a:.1f},{b:.1f}" for a, b in upper_pts + lower_pts[::-1])
        color = _COLORS.get(d.decision, "#57606a")
        parts.append(f'<polygon points="{poly}" fill="{color}" opacity="0.18" stroke="{color}" '
                     f'stroke-opacity="0.5" stroke-width="1"/>')
        est = " ".join(f"{x(r[0]):.1f},{y(r[1]):.1f}" for r in rows)
        parts.append(f'<polyline points="{est}" fill="none" stroke="{color}" stroke-width="2"/>')
        last = rows[-1]
        parts.append(f'<circle cx="{x(last[0]):.1f}" cy="{y(last[1]):.1f}" r="4" fill="{color}"/>')
        right = x(last[0]) > ml + pw * 0.7
        parts.append(f'<text x="{x(last[0]) + (-8 if right else 8):.1f}" y="{y(last[1]) + 4:.1f}" '
                     f'text-anchor="{"end" if right else "start"}" class="ann" fill="{color}">'
                     f'{_e(d.decision)} at {int(last[0])} labels</text>')
    else:
        parts.append(f'<text x="{ml + pw / 2}" y="{mt + ph / 2}" text-anchor="middle" class="tick">'
                     'no labels yet</text>')
    if d.baseline is not None:
        bx = x(d.baseline.labels)
        parts.append(f'<line x1="{bx:.1f}" x2="{bx:.1f}" y1="{mt}" y2="{mt + ph}" stroke="#8a6d00" '
                     f'stroke-dasharray="4 3"/>')
        parts.append(f'<text x="{bx - 4:.1f}" y="{mt + ph - 6}" text-anchor="end" class="ann" fill="#8a6d00">'
                     f'uniform baseline ≈ {d.baseline.labels:.0f}</text>')
    parts.append(f'<text x="{ml + pw / 2}" y="{height - 6}" text-anchor="middle" class="axis">human labels used'
                 '</text>')
    parts.append(f'<text x="14" y="{mt + ph / 2}" text-anchor="middle" class="axis" '
                 f'transform="rotate(-90 14 {mt + ph / 2})">P(tuned preferred)</text>')
    parts.append("</svg>")
    return "".join(parts)


def _nice_step(xmax: float) -> float:
    raw = xmax / 8
    mag = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1
    for m in (1, 2, 5, 10):
        if raw <= m * mag:
            return float(max(1, m * mag))
    return float(max(1, 10 * mag))


def labels_svg(d: ReportData, width: int = 760) -> str:
    """Horizontal bars: labels this run used, the uniform-sampling baseline, and the pool size."""
    bars: list[tuple[str, float, str]] = [(f"this run ({d.method})", float(d.labels), _COLORS.get(d.decision,
                                                                                                 "#57606a"))]
    if d.baseline is not None:
        bars.append(("uniform sampling, labels only", d.baseline.labels, "#8a6d00"))
    bars.append(("every pair (the full pool)", float(d.n_pairs), "#8c959f"))
    top = max([b[1] for b in bars] + [1.0])
    lw, h, bh = 230, 30, 20
    pw = width - lw - 70
    out = [f'<svg class="bars" viewBox="0 0 {width} {h * len(bars) + 8}" '
           f'width="{width}" height="{h * len(bars) + 8}" role="img" aria-label="labels used">']
    for i, (label, v, c) in enumerate(bars):
        yy = 4 + i * h
        out.append(f'<text x="{lw - 8}" y="{yy + bh * 0.75:.1f}" text-anchor="end" class="axis">{_e(label)}</text>')
        out.append(f'<rect x="{lw}" y="{yy}" width="{max(1.0, pw * v / top):.1f}" height="{bh}" fill="{c}" '
                   f'opacity="0.85" rx="2"/>')
        out.append(f'<text x="{lw + max(1.0, pw * v / top) + 6:.1f}" y="{yy + bh * 0.75:.1f}" class="axis">'
                   f'{v:.0f}</text>')
    out.append("</svg>")
    return "".join(out)


# ---------------------------------------------------------------------------------------------- render
_CSS = """
body{font-family:-apple-system,BlinkMacSystemFont,"Segoe UI",Helvetica,Arial,sans-serif;color:#24292f;
 max-width:860px;margin:24px auto;padding:0 20px;line-height:1.45;background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #d0d7de;
 padding-bottom:4px}
.sub{color:#57606a;font-size:13px}
.verdict{border:1px solid #d0d7de;border-radius:8px;padding:14px 16px;margin:16px 0;background:#f6f8fa}
.verdict .big{font-size:18px;font-weight:600}
.badge{display:inline-block;color:#fff;border-radius:12px;padding:1px 10px;font-size:13px;font-weight:600;
 vertical-align:middle}
.guarantee{font-size:14px;margin-top:8px}
.kv{display:grid;grid-template-columns:repeat(4,1fr);gap:8px;margin:12px 0}
.kv div{border:1px solid #d0d7de;border-radius:6px;padding:6px 10px}
.kv b{display:block;font-size:18px}.kv span{font-size:12px;color:#57606a}
table{border-collapse:collapse;width:100%;font-size:13px;margin:6px 0}
th,td{border-bottom:1px solid #eaeef2;padding:5px 6px;text-align:left;vertical-align:top}
th{background:#f6f8fa;font-weight:600}td.n{text-align:right;font-variant-numeric:tabular-nums}
svg text.tick{font-size:11px;fill:#57606a}svg text.axis{font-size:12px;fill:#24292f}
svg text.ann{font-size:12px;font-weight:600}
p{font-size:14px}.note{font-size:12px;color:#57606a}
.ex{font-size:12px;color:#24292f;white-space:pre-wrap}
footer{margin:28px 0;font-size:12px;color:#57606a}
"""


def _judge_table(d: ReportData) -> str:
    if not d.judges:
        return '<p class="note">No judge votes in this run (labels only: the classical sequential test).</p>'
    order = any(j.position_bias is not None or j.swap_inconsistency is not None for j in d.judges)
    head = ("<tr><th>judge</th><th>labelled pairs</th><th>agreement (decisive)</th><th>agreement (3-way)</th>"
            "<th>bias</th><th>correlation</th><th>judges-only estimate</th>"
            + ("<th>position bias</th><th>order flip</th>" if order else "") + "</tr>")
    rows = []
    for j in d.judges:
        extra = (f"<td class=n>{_pct(j.position_bias)}</td><td class=n>{_f(j.swap_inconsistency, 2)}</td>"
                 if order else "")
        rows.append(f"<tr><td>{_e(j.name)}</td><td class=n>{j.n}</td><td class=n>{_pct(j.decisive_agreement)}</td>"
                    f"<td class=n>{_pct(j.three_way_agreement)}</td><td class=n>{_signed(j.bias)}</td>"
                    f"<td class=n>{_f(j.correlation, 2)}</td><td class=n>{_f(j.mean_vote)}</td>{extra}</tr>")
    order_note = ("<b>position bias</b> = how often the judge picks the response shown first; <b>order flip</b> = "
                  "mean change of its vote when the two responses swap places. " if order else "")
    return (f"<table>{head}{''.join(rows)}</table>"
            '<p class="note">On the pairs humans labelled. <b>agreement</b>: the judge\'s side (vote above or below '
            "½) matches the human's, over pairs where the human was not tied; 3-way also counts ties (a vote of "
            "exactly ½ is the judge's tie). <b>bias</b> = mean judge vote − mean human label (positive: the judge favours the tuned "
            "model). The <b>judges-only estimate</b> is what the judges alone would report over every pair; it "
            "carries that bias, which is why the human labels correct it (prediction-powered inference) rather "
            f"than the judges deciding. {order_note}</p>")


def _judge_worth_table(d: ReportData) -> str:
    """What the judges were worth: CPU spent against labels saved (sampler/judge_value.py)."""
    if not d.judge_worth:
        return ""
    rows = []
    for j in d.judge_worth:
        hi = j.labels_saved_interval[1] if len(j.labels_saved_interval) > 1 else None
        lo = j.labels_saved_interval[0] if j.labels_saved_interval else None
        saved = (f"{'∞' if j.labels_saved is None else f'{j.labels_saved:.1f}'} "
                 f"({'∞' if lo is None else _f(lo, 1)}, {'∞' if hi is None else _f(hi, 1)})")
        state = f"{j.state or ''}{f' ({j.stopped_by})' if j.stopped_by else ''}"
        rows.append(f"<tr><td>{_e(j.name)}</td><td>{_e(state)}</td>"
                    f"<td class=n>{'' if j.pairs_voted is None else j.pairs_voted}</td>"
                    f"<td class=n>{'' if j.cpu_s is None else f'{j.cpu_s:.3g}'}</td>"
                    f"<td class=n>{_pct(j.value)} ({_pct(j.interval[0])}, {_pct(j.interval[1])})</td>"
                    f"<td class=n>{j.labels}</td><td class=n>{saved}</td></tr>")
    level = f"{100 * d.judge_worth[0].level:.0f}"
    return ("<h2>What the judges were worth</h2><table><tr><th>judge</th><th>state</th><th>pairs voted</th>"
            f"<th>CPU-s spent</th><th>labels saved, share ({level}% interval)</th><th>labelled pairs</th>"
            "<th>labels saved in this run</th></tr>" + "".join(rows) + "</table>"
            '<p class="note">The share of the human-label variance that the judge\'s calibrated votes explain '
            "(cross-fitted R²) is the share of labels it saves against the labels-only test: a run that used n "
            "labels would have needed about n / (1 − share) without it. Measured on the labelled pairs it voted "
            "on; the interval is for the judge's value on this pool (Fisher z). With <b>judge_budget: auto</b> a "
            "judge whose votes do not agree with the labels at a checkpoint of its trial (<b>trial</b>), or whose "
            "interval stays below 5% (<b>value</b>), is stopped (<b>stopped-worthless</b>): it spends no more CPU "
            "on this run; the verdict's guarantee is unaffected. CPU-seconds of judges run in the service's own "
            "process count the calling thread only.</p>")


def _signed(x: float | None) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    return f"{x:+.3f}"


def _verdict_table(first: str, rows: list[tuple[str, int | None, QuestionVerdict]]) -> str:
    """One row per question (a criterion or a slice): name, [pairs], verdict, estimate, interval, labels, alpha."""
    with_pairs = any(n is not None for _, n, _ in rows)
    body = "".join(
        f"<tr><td>{_e(name)}</td>" + (f"<td class=n>{n}</td>" if with_pairs else "") +
        f"<td>{_badge(v.decision)}</td><td class=n>{_f(v.estimate)}</td>"
        f"<td class=n>({_f(v.lower)}, {_f(v.upper)})</td><td class=n>{v.labels}</td>"
        f"<td class=n>{_f(v.alpha, 4)}</td></tr>" for name, n, v in rows)
    head = f"<th>{first}</th>" + ("<th>pairs</th>" if with_pairs else "")
    return (f"<table><tr>{head}<th>verdict</th><th>estimate</th><th>interval</th><th>labels</th><th>α</th></tr>"
            f"{body}</table>")


def _alpha_split_note(d: ReportData) -> str:
    return f'<p class="note">{_e(d.alpha_split)}</p>' if d.alpha_split else ""


def _criteria_table(d: ReportData) -> str:
    if not d.criteria:
        return ""
    return ("<h2>Per-criterion verdicts</h2>" + _verdict_table("criterion", [(c.criterion, None, c) for c in d.criteria])
            + _alpha_split_note(d))


def forest_svg(d: ReportData, width: int = 760) -> str:
    """Forest plot: the overall interval and each slice's interval against 1/2 (and the margin), inline SVG."""
    rows = [("overall", d.decision, d.estimate, d.lower, d.upper, d.n_pairs)] + [
        (s.slice, s.decision, s.estimate, s.lower, s.upper, s.n_pairs) for s in d.slices]
    left, right, top, step = 190, 20, 26, 24
    height = top + step * len(rows) + 24
    span = width - left - right

    def x(v: float) -> float:
        return left + span * min(max(v, 0.0), 1.0)

    parts = [f'<svg class="chart" viewBox="0 0 {width} {height}" width="100%" role="img" '
             f'aria-label="slice intervals against one half" xmlns="http://www.w3.org/2000/svg">']
    for t in (0.0, 0.25, 0.5, 0.75, 1.0):
        parts.append(f'<line x1="{x(t):.1f}" y1="{top - 8}" x2="{x(t):.1f}" y2="{height - 20}" '
                     f'stroke="{"#24292f" if t == 0.5 else "#d0d7de"}" stroke-width="{1.5 if t == 0.5 else 1}"/>'
                     f'<text x="{x(t):.1f}" y="{height - 6}" font-size="11" text-anchor="middle" '
                     f'fill="#57606a">{t:g}</text>')
    if d.margin > 0:
        parts.append(f'<rect x="{x(0.5 - d.margin):.1f}" y="{top - 8}" width="{x(0.5 + d.margin) - x(0.5 - d.margin):.1f}" '
                     f'height="{height - top - 12}" fill="#1f5fbf" opacity="0.08"/>')
    for k, (name, dec, est, lo, hi, n) in enumerate(rows):
        yy = top + step * k + step / 2
        c = _COLORS.get(dec, "#57606a")
        label = _e(_clip_text(f"{name} ({n})", 28))
        parts.append(f'<text x="{left - 8}" y="{yy + 4:.1f}" font-size="12" text-anchor="end" '
                     f'font-weight="{"bold" if k == 0 else "normal"}">{label}</text>'
                     f'<line x1="{x(lo):.1f}" y1="{yy:.1f}" x2="{x(hi):.1f}" y2="{yy:.1f}" stroke="{c}" '
                     f'stroke-width="5" stroke-linecap="round" opacity="0.55"/>'
                     f'<circle cx="{x(est):.1f}" cy="{yy:.1f}" r="4.5" fill="{c}"><title>{label}: {_e(dec)}, '
                     f'estimate {_f(est)}, interval ({_f(lo)}, {_f(hi)})</title></circle>')
    parts.append("</svg>")
    return "".join(parts)


def _slices_section(d: ReportData) -> str:
    if not d.slices:
        return ""
    return ("<h2>Per-slice verdicts</h2>" + forest_svg(d) +
            '<p class="note">Each bar is the anytime-valid interval for the preference rate on that slice\'s '
            "pairs (dot: estimate); a slice is better / worse once its bar leaves ½. Slice verdicts come from the "
            "same labels as the overall one.</p>"
            + _verdict_table("slice", [(sl.slice, sl.n_pairs, sl) for sl in d.slices]) + _alpha_split_note(d))


def _baseline_text(d: ReportData) -> str:
    if d.baseline is None:
        return ('<p class="note">No uniform-sampling baseline was computed for this run.</p>')
    b = d.baseline
    saved = b.labels - d.labels
    rel = (saved / b.labels) if b.labels > 0 else 0.0
    word = "fewer" if saved >= 0 else "more"
    dec = f", {100 * b.decided_share:.0f}% of them decided" if b.decided_share is not None else ""
    return (f'<p>This run used <b>{d.labels}</b> human labels; the baseline ({_e(b.note)}) needs '
            f"<b>{b.labels:.1f}</b> on average ({b.runs} simulated runs{dec}): {abs(saved):.1f} "
            f"({100 * abs(rel):.0f}%) {word}. One run is one random draw; the average over many runs is what "
            "docs/benchmarks.md compares.</p>")


def _examples(d: ReportData) -> str:
    if not d.examples:
        return ""

    def y(v: float | None) -> str:
        if v is None:
            return "—"
        words = {1.0: "tuned", 0.0: "base", 0.5: "tie"}
        return words.get(v, f"{v:.2f}")

    rows = "".join(
        f"<tr><td>{_e(p.pair_id)}</td><td class=ex>{_e(_clip_text(p.prompt, 240))}</td>"
        f"<td class=ex>{_e(_clip_text(p.base, 160))}</td><td class=ex>{_e(_clip_text(p.tuned, 160))}</td>"
        f"<td>{y(p.human)}</td><td class=n>{_f(p.judge, 2)}</td></tr>" for p in d.examples)
    return ("<h2>Labelled pairs where judges and humans disagreed most</h2>"
            "<table><tr><th>pair</th><th>prompt</th><th>base</th><th>tuned</th><th>human</th>"
            f"<th>judges P(tuned)</th></tr>{rows}</table>"
            '<p class="note">human = the human verdict on the pair (the mean when several annotators labelled '
            "it); judges P(tuned) = the judges' mean vote.</p>")


def render_report(data: ReportData) -> str:
    """The whole report as one self-contained HTML string."""
    d = data
    when = d.generated_at or datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    title = f"tiebreak · {d.name}"
    budget = f" of a budget of {d.budget}" if d.budget else ""
    kv = (f'<div class="kv"><div><b>{_f(d.estimate)}</b><span>estimate of P(tuned preferred)</span></div>'
          f"<div><b>({_f(d.lower)}, {_f(d.upper)})</b><span>{_conf(d.alpha)}% confidence sequence</span></div>"
          f"<div><b>{d.labels}</b><span>human labels{_e(budget)}</span></div>"
          f"<div><b>{d.n_pairs}</b><span>pairs · {d.votes} judged</span></div></div>")
    notes = "".join(f'<p class="note">{_e(n)}</p>' for n in d.notes)
    margin = f", equivalence margin ±{d.margin:g}" if d.margin > 0 else ""
    body = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)}</title><style>{_CSS}</style></head><body>
<h1>{_e(f"{d.tuned_model} vs {d.base_model}" if _named(d) else d.name)}</h1>
<div class="sub">{_e(d.name) + " · " if _named(d) else ""}{("run " + _e(d.run_id) + " · ") if d.run_id else ""}method {_e(d.method)} ·
 α = {d.alpha:.4g}{margin} · {_e(when)}</div>
<div class="verdict"><div class="big">{_badge(d.decision)} {_e(verdict_sentence(d))}</div>
<div class="guarantee">{_e(guarantee_sentence(d))}</div></div>
{kv}
<h2>Interval against labels</h2>
{trajectory_svg(d)}
<p class="note">The shaded band is the anytime-valid confidence sequence (open interval: the rate lies strictly
inside it) for the share of pairs on which a human prefers the tuned model; the line is the prediction-powered estimate. The run stops the first time the band
leaves ½ (better / worse){" or fits inside the margin (equivalent)" if d.margin > 0 else ""}.</p>
{_slices_section(d)}
{_criteria_table(d)}
<h2>Labels used against uniform sampling</h2>
{labels_svg(d)}
{_baseline_text(d)}
<h2>Judge agreement and bias</h2>
{_judge_table(d)}
{_judge_worth_table(d)}
{_examples(d)}
{notes}
<footer>Generated by tiebreak. The estimand is the preference rate on this pool of pairs, with a tie counting ½;
it says nothing about prompts outside the pool.</footer>
</body></html>
"""
    return body


# ------------------------------------------------------------------------------------------ from a run
def judge_rows(votes: np.ndarray, judge_names: Sequence[str], labels: Mapping[int, float],
               extras: Mapping[str, Mapping[str, float]] | None = None,
               ensemble: np.ndarray | None = None) -> list[JudgeRow]:
    """Agreement/bias of each judge column of ``votes`` (N x J, NaN = missing) on the labelled pairs.

    ``extras`` may add ``position_bias`` / ``swap_inconsistency`` per judge name. ``ensemble`` (length N) adds
    a row for the combined vote (e.g. the mean of the judges).
    """
    votes = np.asarray(votes, dtype=float)
    if votes.ndim != 2:
        votes = votes.reshape(len(votes), -1)
    cols = [(str(n), votes[:, k]) for k, n in enumerate(judge_names)]
    if ensemble is not None and len(cols) > 1:
        cols.append(("ensemble (mean)", np.asarray(ensemble, dtype=float)))
    idx = np.fromiter(labels.keys(), dtype=int, count=len(labels))
    ys = np.fromiter((labels[i] for i in idx), dtype=float, count=len(idx))
    out = []
    for name, col in cols:
        f = col[idx] if len(idx) else np.empty(0)
        ok = ~np.isnan(f)
        fv, yv = f[ok], ys[ok]
        row = JudgeRow(name=name, n=int(ok.sum()))
        allv = col[~np.isnan(col)]
        row.mean_vote = float(allv.mean()) if allv.size else None
        if fv.size:
            row.bias = float(fv.mean() - yv.mean())
            dec = (yv != 0.5) & (np.abs(fv - 0.5) > 1e-9)
            if dec.any():
                row.decisive_agreement = float(np.mean((fv[dec] > 0.5) == (yv[dec] > 0.5)))
            row.three_way_agreement = three_way_agreement(fv, yv)
            if fv.size > 2 and fv.std() > 0 and yv.std() > 0:
                row.correlation = float(np.corrcoef(fv, yv)[0, 1])
        ex = (extras or {}).get(name, {})
        row.position_bias = ex.get("position_bias")
        row.swap_inconsistency = ex.get("swap_inconsistency")
        out.append(row)
    return out


def report_data_from_comparison(comparison: Any, *, run_id: str = "", name: str = "comparison",
                                base_model: str = "base", tuned_model: str = "tuned",
                                judge_names: Sequence[str] | None = None,
                                pairs: PairsByIndex | None = None,
                                criteria: Sequence[CriterionVerdict] | Mapping[str, Any] | None = None,
                                alpha_split: str | None = None, baseline: Baseline | None = None,
                                judge_extras: Mapping[str, Mapping[str, float]] | None = None,
                                n_examples: int = 5, notes: Sequence[str] = (),
                                auto_baseline: bool = True) -> ReportData:
    """ReportData from a ``sampler.engine.Comparison`` (the overall criterion) plus optional context.

    ``pairs``: per pool index, dicts with ``id``, ``prompt``, ``base``, ``tuned`` (for the example table).
    ``criteria``: either CriterionVerdicts or ``{criterion: Comparison}`` (each summarised by its status).
    ``auto_baseline``: without ``baseline``, estimate the uniform-sampling baseline from this run's own labels
    (``uniform_baseline`` on the labelled pairs resampled to the pool size; needs >= 5 labels).
    """
    st = comparison.status()
    cfg = comparison.config
    # every vote received (a streaming run's newest ones too: the sampler uses them from its next refit)
    received = getattr(comparison, "votes_received", None)
    votes = np.asarray(received() if callable(received) else comparison.votes, dtype=float)
    n_j = votes.shape[1] if votes.ndim == 2 else 0
    names = list(judge_names) if judge_names is not None else [f"judge {k + 1}" for k in range(n_j)]
    labels = {int(i): float(y) for i, y in comparison.labels.items() if 0 <= int(i) < st.n_items}
    rows: list[JudgeRow] = []
    ens = None
    if n_j:
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)   # a pair without votes yet: NaN, as meant
            ens = np.nanmean(votes, axis=1) if n_j > 1 else None
        rows = judge_rows(votes, names[:n_j], labels, judge_extras, ens)
    crit: list[CriterionVerdict] = []
    if isinstance(criteria, Mapping):
        for cname, comp in criteria.items():
            s = comp.status()
            crit.append(CriterionVerdict(criterion=str(cname), decision=s.decision.value, estimate=s.estimate,
                                         lower=s.lower, upper=s.upper, labels=s.labels, alpha=s.alpha))
    elif criteria:
        crit = list(criteria)
    examples: list[ExamplePair] = []
    if pairs is not None and labels and n_examples > 0:
        comb = ens if ens is not None else (votes[:, 0] if n_j else None)
        order = list(labels)
        if comb is not None:
            order.sort(key=lambda i: -(abs(comb[i] - labels[i]) if not math.isnan(comb[i]) else -1.0))
        for i in order[:n_examples]:
            p = pairs[i]
            examples.append(ExamplePair(
                pair_id=str(p.get("id", i)), prompt=str(p.get("prompt", "")), base=str(p.get("base", "")),
                tuned=str(p.get("tuned", "")), human=labels[i],
                judge=None if comb is None or math.isnan(comb[i]) else float(comb[i])))
    if baseline is None and auto_baseline and len(labels) >= 5 and st.n_items <= 5000:
        try:  # ~0.1-3 s; skipped on pools above 5,000 pairs (pass ``baseline`` from a replay instead)
            baseline = uniform_baseline(list(labels.values()), alpha=st.alpha, margin=cfg.margin, budget=cfg.budget,
                                        runs=10 if st.n_items <= 1000 else 4, n_items=st.n_items)
        except Exception:  # noqa: BLE001 - the baseline is context, never a reason to fail the report
            baseline = None
    n_votes = int(np.sum(np.any(~np.isnan(votes), axis=1))) if n_j else 0
    slices = [SliceVerdict(slice=k, n_pairs=v.n_items, decision=v.decision.value, estimate=v.estimate,
                           lower=v.lower, upper=v.upper, labels=v.labels, alpha=v.alpha)
              for k, v in (comparison.slice_statuses() if hasattr(comparison, "slice_statuses") else {}).items()]
    return ReportData(
        run_id=run_id, name=name, base_model=base_model, tuned_model=tuned_model, decision=st.decision.value,
        estimate=st.estimate, lower=st.lower, upper=st.upper, alpha=st.alpha, margin=cfg.margin,
        method=st.method, n_pairs=st.n_items, labels=st.labels, votes=n_votes, budget=cfg.budget,
        trajectory=[list(map(float, r)) for r in comparison.trajectory], judges=rows, criteria=crit, slices=slices,
        alpha_split=alpha_split, baseline=baseline, examples=examples, notes=list(notes))


def uniform_baseline(labels_by_item: Sequence[float] | Sequence[Sequence[float]], *, alpha: float = 0.05,
                     margin: float = 0.0, budget: int | None = None, runs: int = 20, seed: int = 0,
                     n_items: int | None = None) -> Baseline:
    """Simulate the labels-only test with uniform sampling without replacement on a pool.

    ``labels_by_item``: per pair either one label or the list of recorded human votes (one drawn at random per
    request, like the replay annotator). If ``n_items`` exceeds the number given (only some pairs have labels,
    as in a live run), the pool is filled by resampling the known pairs — an estimate, said so in the note.
    """
    from tiebreak.sampler.engine import Comparison, ComparisonConfig

    pool = [list(v) if isinstance(v, Sequence) else [float(v)] for v in labels_by_item]
    if not pool:
        raise ValueError("uniform_baseline needs at least one labelled pair")
    rng = np.random.default_rng(seed)
    n = n_items or len(pool)
    note = Baseline.model_fields["note"].default
    if n > len(pool):
        note += f"; pool of {n} filled by resampling the {len(pool)} labelled pairs, so an estimate"
    used, decided = [], 0
    for _ in range(runs):
        items = pool if n == len(pool) else [pool[k] for k in rng.integers(0, len(pool), n)]
        c = Comparison(None, n_items=n, config=ComparisonConfig(alpha=alpha, margin=margin, budget=budget,
                                                                 method="classical"), rng=rng)
        while not c.decision.final:
            nxt = c.next_items(1)
            if not nxt:
                break
            i = nxt[0]
            c.record_label(i, float(rng.choice(items[i])))
        used.append(len(c.labels))
        decided += c.decision.final and c.decision is not Decision.UNDECIDED
    return Baseline(labels=float(np.mean(used)), runs=runs, decided_share=decided / runs, note=note)
