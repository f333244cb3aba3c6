"""The experiment report (services/experiment_report.py): built from a real ExperimentService over in-process
runs, self-contained, escaped, and saying what the signal did and when."""

from __future__ import annotations

import re

import pytest

from tiebreak.services.experiment_report import (
    CheckpointRow,
    ComparisonRow,
    ExperimentReportData,
    _ticks,
    _y_range,
    experiment_report_data,
    file_run_href,
    render_experiment_report,
)
from tiebreak.services.experiments import ExperimentService, LocalRuns, NotFound

PROMPTS = [{"id": f"q{i}", "text": f"question {i}"} for i in range(12)]


def _experiment(ranks: dict[str, int], order: list[str], name: str = "ladder", **body):
    """Checkpoints submitted in ``order``, each labelled to its decision before the next arrives; a human prefers
    the side with the higher rank (equal ranks: a tie)."""
    runs = LocalRuns(seed=0)
    svc = ExperimentService(runs, notifier=lambda url, payload: None)
    exp = svc.create_experiment({"name": name, "prompts": PROMPTS, "judges": [], "patience": 2,
                                 "base": {"outputs": {p["id"]: "b" for p in PROMPTS}}, **body})

    def human(pair: dict) -> float:
        a, b = ranks[pair["base_ref"]], ranks[pair["tuned_ref"]]
        return 1.0 if b > a else 0.0 if b < a else 0.5

    for ck in order:
        res = svc.add_checkpoint(exp, {"checkpoint": ck, "outputs": {p["id"]: ck for p in PROMPTS}})
        runs.annotate(human, res["runs"])
    return svc, exp


def test_report_of_a_regression_names_best_stop_and_links():
    svc, exp = _experiment({"base": 0, "ck-1": 2, "ck-2": 1, "ck-3": 1}, ["ck-1", "ck-2", "ck-3"])
    d = experiment_report_data(svc, exp, run_href=file_run_href)
    assert [c.checkpoint for c in d.checkpoints] == ["ck-1", "ck-2", "ck-3"]
    assert [c.decision for c in d.checkpoints] == ["better", "worse", "worse"]
    assert [c.vs_base.decision for c in d.checkpoints] == ["better", "better", "better"]
    assert d.checkpoints[0].vs_best is None and d.checkpoints[1].vs_best.against == "ck-1"
    assert d.best_checkpoint == "ck-1" and d.stop and d.reason == "regression"
    assert d.stop_checkpoint == "ck-3"           # the rule first holds once ck-3's verdict is in
    assert d.labels == sum(c.labels for c in d.checkpoints) > 0
    assert d.checkpoints[0].alpha > d.checkpoints[1].alpha > d.checkpoints[2].alpha   # alpha-spending
    # the 2nd checkpoint's two comparisons split its alpha
    assert d.checkpoints[1].vs_base.alpha == pytest.approx(d.checkpoints[1].alpha / 2)
    html = render_experiment_report(d)
    for rid in svc.run_ids(exp):
        assert f'href="tiebreak-report-{rid}.html"' in html
    assert "Stop training (regression)" in html and "first fired once the verdict of ck-3" in html
    assert "Best checkpoint: ck-1 (ck-1 is better than the base)" in html
    assert html.count('class="est est-base"') == 3 and html.count('class="est est-best"') == 2
    assert html.count('class="stopline"') == 1 and "★ best" in html
    # self-contained: no scripts, no external resources
    assert not re.search(r"https?://", html) and "<script" not in html and "src=" not in html


def test_stop_that_a_later_checkpoint_lifted_is_still_reported():
    # ck-1, ck-2 not better than the base (plateau fires after ck-2), then ck-3 beats the base: the stop lifts
    svc, exp = _experiment({"base": 1, "ck-1": 1, "ck-2": 0, "ck-3": 2}, ["ck-1", "ck-2", "ck-3"], margin=0.2)
    d = experiment_report_data(svc, exp)
    assert [c.decision for c in d.checkpoints] == ["equivalent", "worse", "better"]
    assert not d.stop and d.best_checkpoint == "ck-3" and d.stop_checkpoint == "ck-2"
    html = render_experiment_report(d)
    assert "Keep training" in html and "first fired once the verdict of ck-2" in html and "lifted" in html
    assert 'href="../../runs/' in html             # the API's relative links by default


def test_report_escapes_names_and_handles_empty_and_unknown():
    svc, exp = _experiment({"base": 0, "<script>x</script>": 1}, ["<script>x</script>"], name='a&b "<i>"')
    html = render_experiment_report(experiment_report_data(svc, exp))
    assert "<script>x" not in html and "&lt;script&gt;x&lt;/script&gt;" in html
    assert "a&amp;b &quot;&lt;i&gt;&quot;" in html and "<i>" not in html
    empty = render_experiment_report(ExperimentReportData())
    assert "no checkpoints yet" in empty and "Keep training" in empty
    with pytest.raises(NotFound):
        experiment_report_data(svc, "exp_missing")


def test_a_checkpoint_still_generating_is_shown_not_drawn():
    d = ExperimentReportData(checkpoints=[CheckpointRow(checkpoint="ck", index=1, alpha=0.03, status="generating",
                                                        vs_base=ComparisonRow(run_id="", decision="generating"))])
    html = render_experiment_report(d)
    assert "ck</b> (generating)" in html and 'class="est' not in html


def test_theta_axis_covers_every_interval_half_and_margin():
    row = lambda lo, hi: ComparisonRow(run_id="r", lower=lo, upper=hi, estimate=(lo + hi) / 2)  # noqa: E731
    d = ExperimentReportData(margin=0.05, checkpoints=[
        CheckpointRow(checkpoint="a", index=1, alpha=0.03, vs_base=row(0.41, 0.47)),
        CheckpointRow(checkpoint="b", index=2, alpha=0.01, vs_base=row(0.50, 0.62), vs_best=row(0.3, 0.44))])
    lo, hi = _y_range(d)
    assert lo <= 0.3 and hi >= 0.62 and 0 <= lo < hi <= 1 and lo < 0.45 and hi > 0.55
    ticks = _ticks(lo, hi)
    assert 2 <= len(ticks) <= 9 and ticks == sorted(ticks) and lo <= ticks[0] and ticks[-1] <= hi + 1e-9
    assert _y_range(ExperimentReportData()) == (0.45, 0.55)
