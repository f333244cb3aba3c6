"""The HTML report: self-contained, shows the trajectory and the guarantee, escapes user text."""

from __future__ import annotations

import re

import numpy as np

from tiebreak.sampler.engine import Comparison, ComparisonConfig
from tiebreak.services.report import (
    Baseline,
    CriterionVerdict,
    ExamplePair,
    JudgeRow,
    ReportData,
    guarantee_sentence,
    render_report,
    report_data_from_comparison,
    uniform_baseline,
)


def _data(**kw) -> ReportData:
    base = dict(
        run_id="r1", name="demo", base_model="guanaco-7b", tuned_model="gpt-4", decision="better",
        estimate=0.7, lower=0.55, upper=0.85, alpha=0.05, n_pairs=80, labels=12, votes=160,
        trajectory=[[1, 0.8, 0.0, 1.0], [5, 0.75, 0.3, 0.95], [12, 0.7, 0.55, 0.85]],
        judges=[JudgeRow(name="qwen", n=12, decisive_agreement=0.7, bias=0.1)],
        criteria=[CriterionVerdict(criterion="overall", decision="better", estimate=0.7, lower=0.55, upper=0.85,
                                   labels=12, alpha=0.05)],
        baseline=Baseline(labels=33.0, runs=20, decided_share=1.0),
        examples=[ExamplePair(pair_id="p1", prompt='<script>alert("x")</script> & co', base="b", tuned="t",
                              human=1.0, judge=0.2)],
    )
    base.update(kw)
    return ReportData(**base)


def test_report_is_self_contained_and_complete():
    out = render_report(_data())
    assert out.startswith("<!DOCTYPE html>")
    assert '<svg class="traj"' in out and "<polygon" in out and "<polyline" in out
    assert '<svg class="bars"' in out
    # no external resources of any kind
    assert not re.search(r"https?://", out)
    assert "<script" not in out and "<link" not in out and "@import" not in out and "src=" not in out
    assert "at most 5% of the time, however early the run stopped" in out
    assert "Per-criterion verdicts" in out and "Judge agreement and bias" in out
    assert "better at 12 labels" in out


def test_report_escapes_prompt_text():
    out = render_report(_data(name="<b>x</b>", tuned_model="a&b"))
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; co" in out
    assert "<b>x</b>" not in out and "a&amp;b" in out


def test_report_handles_empty_run():
    out = render_report(ReportData())
    assert "no labels yet" in out and "Still running" in out


def test_guarantee_sentence_uses_alpha():
    assert "at least 90%" in guarantee_sentence(_data(alpha=0.1))


def test_report_data_from_comparison_and_baseline():
    rng = np.random.default_rng(0)
    n = 60
    y = (rng.random(n) < 0.8).astype(float)
    votes = np.clip(y[:, None] * 0.6 + 0.2 + rng.normal(0, 0.1, (n, 2)), 0, 1)
    c = Comparison(votes, config=ComparisonConfig(), rng=rng)
    while not c.decision.final:
        for i in c.next_items(1):
            c.record_label(i, float(y[i]))
    pairs = [{"id": f"p{i}", "prompt": f"prompt <{i}>", "base": "b", "tuned": "t"} for i in range(n)]
    b = uniform_baseline(list(y), runs=3)
    d = report_data_from_comparison(c, run_id="x", judge_names=["j1", "j2"], pairs=pairs, baseline=b,
                                    criteria={"overall": c})
    assert d.decision == c.status().decision.value and d.labels == len(c.labels)
    assert [r.name for r in d.judges] == ["j1", "j2", "ensemble (mean)"]
    assert d.judges[0].n == len(c.labels) and d.judges[0].decisive_agreement is not None
    assert d.trajectory and d.trajectory[-1][0] == len(c.labels)
    assert 0 < b.labels <= n and b.runs == 3
    out = render_report(d)
    assert "prompt &lt;" in out
    # round-trips as JSON (the service may ship it)
    assert ReportData.model_validate_json(d.model_dump_json()) == d
