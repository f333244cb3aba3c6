"""The demo's pieces that need no service: the packaged pool, the simulated annotator's blind mapping, the view."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from tiebreak.services.demo import (
    DATASETS,
    Lane,
    LiveState,
    SimulatedAnnotator,
    comparison_html,
    comparison_rows,
    crowd_draws,
    demo_items,
    interval_bar,
    recorded_votes,
    render_live,
    select_pool,
    worth_line,
)

ROOT = Path(__file__).resolve().parents[2]
RECORDED_GPT4 = "recorded:gpt-4"
PANDALM_NOTE = DATASETS["pandalm"].recorded_note


def test_the_default_demo_pool_is_600_pandalm_pairs_at_theta_0_6_with_two_recorded_judges():
    items = demo_items()
    assert len(items) == 600 and len({it["id"] for it in items}) == 600
    assert all(isinstance(it["base"], str) and isinstance(it["tuned"], str) and it["base"] != it["tuned"]
               for it in items)
    # one crowd answer per pair, the plurality of its three annotators, never a tie; θ exactly 0.6
    for it in items:
        top = Counter(it["annotator_votes"]).most_common()
        assert len(it["annotator_votes"]) == 3 and it["human_votes"] == [top[0][0]] and top[0][1] >= 2
    assert sum(it["human_votes"] == ["tuned"] for it in items) == 360
    # both recorded judges on every pair (GPT-3.5-turbo's verdict is missing on a few: None, as in the source)
    votes = [recorded_votes(it) for it in items]
    assert all(set(v) == {"recorded:gpt-3.5-turbo", "recorded:pandalm-7b"} for v in votes)
    assert all(v["recorded:pandalm-7b"] is not None for v in votes)
    assert sum(v["recorded:gpt-3.5-turbo"] is None for v in votes) < 30


def test_the_packaged_demo_pools_are_what_derive_py_writes():
    """services/demo_data/*.jsonl are derived by code from ../shared/data, not edited by hand."""
    if not (ROOT.parent / "shared" / "data" / "pandalm_testset.jsonl").exists():
        pytest.skip("../shared/data is not beside the checkout")
    out = subprocess.run([sys.executable, "services/demo_data/derive.py", "--check"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr + out.stdout


def test_fixed_theta_draw_takes_exact_counts_and_refuses_too_many():
    import importlib.util

    spec = importlib.util.spec_from_file_location("derive", ROOT / "services" / "demo_data" / "derive.py")
    derive = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(derive)
    labels = ["A", "B", "tie"] * 20 + ["B"] * 10
    idx = derive.fixed_theta_indices(labels, 0.6, 40, seed=3)
    assert len(set(idx)) == 40 and Counter(labels[i] for i in idx) == Counter({"B": 24, "A": 16})
    assert idx == derive.fixed_theta_indices(labels, 0.6, 40, seed=3) != derive.fixed_theta_indices(labels, 0.6, 40, 4)
    with pytest.raises(SystemExit, match="needs 32 B-preferred"):
        derive.fixed_theta_indices(labels, 0.8, 40, seed=3)


def test_vicuna80_items_are_the_guanaco7b_gpt4_pair():
    items = demo_items("vicuna80")
    assert len(items) == 80 and len({it["id"] for it in items}) == 80
    assert all(it["prompt"] and it["base"] and it["tuned"] and it["human_votes"] for it in items)
    assert all(v in ("tuned", "base", "tie") for it in items for v in it["human_votes"])
    theta = np.mean([np.mean([{"tuned": 1, "base": 0, "tie": 0.5}[v] for v in it["human_votes"]]) for it in items])
    assert 0.66 < theta < 0.70   # the crowd prefers GPT-4 (tuned) on ~68% (shared/data README, QLoRA release)


def test_select_pool_spreads_over_categories():
    pool = select_pool(demo_items("vicuna80"), 40)
    assert len(pool) == 40 and len({it["category"] for it in pool}) >= 8
    with pytest.raises(ValueError):
        select_pool(demo_items("vicuna80"), 0)
    with pytest.raises(ValueError, match="--data must be one of pandalm, vicuna80"):
        demo_items("nope")


def test_simulated_annotator_maps_votes_to_blind_sides():
    item = {"id": "q", "base": "B-text", "tuned": "T-text", "human_votes": ["tuned"]}
    a = SimulatedAnnotator(None, "r", "t", {"q": item})
    assert a.answer({"pair_id": "q", "left": "T-text", "right": "B-text"}) == ("left", 1.0)
    assert a.answer({"pair_id": "q", "left": "B-text", "right": "T-text"}) == ("right", 1.0)
    item["human_votes"] = ["base"]
    assert a.answer({"pair_id": "q", "left": "B-text", "right": "T-text"}) == ("left", 0.0)
    item["human_votes"] = ["tie"]
    assert a.answer({"pair_id": "q", "left": "B-text", "right": "T-text"}) == ("tie", 0.5)
    with pytest.raises(RuntimeError):
        a.answer({"pair_id": "q", "left": "x", "right": "y"})


def test_live_view_renders():
    bar = interval_bar(0.55, 0.9, 0.7, width=20)
    assert bar.startswith("0 ") and bar.endswith(" 1") and "●" in bar
    st = LiveState(status={"name": "x", "n_pairs": 4, "votes": 2, "labels": 1, "interval": [0.2, 0.9],
                           "estimate": 0.6, "decision": "running", "judges": ["j"]},
                   judge_rows=[{"name": "j", "n": 1, "decisive_agreement": 1.0, "bias": 0.1, "mean_vote": 0.6}])
    from rich.console import Console

    con = Console(width=120, record=True)
    con.print(render_live(st))
    text = con.export_text()
    assert "2/4 pairs judged" in text and "(0.200, 0.900)" in text and "100%" in text


def test_crowd_draws_fix_one_recorded_vote_per_pair_for_every_run():
    items = demo_items("vicuna80")
    a, b = crowd_draws(items, 0), crowd_draws(items, 0)
    assert a == b and set(a) == {it["id"] for it in items}
    assert all(a[it["id"]] in it["human_votes"] for it in items)
    assert crowd_draws(items, 1) != a      # the seed changes the draws


def test_recorded_votes_average_a_judges_orders_and_keep_judges_apart():
    assert recorded_votes({"recorded_judges": {"gpt-4(order 1)": "tuned", "gpt-4(order 2)": "tie"}}) == \
        {RECORDED_GPT4: 0.75}
    assert recorded_votes({"recorded_judges": {"gpt-4(order 1)": None}}) == {RECORDED_GPT4: None}
    assert recorded_votes({"recorded_judges": {"gpt-3.5-turbo": "base", "pandalm-7b": "tuned"}}) == \
        {"recorded:gpt-3.5-turbo": 0.0, "recorded:pandalm-7b": 1.0}
    # every Vicuna-80 pair carries a recorded GPT-4 verdict (the recorded lane needs one per pair)
    assert all(recorded_votes(it)[RECORDED_GPT4] is not None for it in demo_items("vicuna80"))


def _row(lane, labels, decision="better", interval=(0.52, 0.7)):
    return {"lane": lane, "title": lane, "judges": "j", "labels": labels, "decision": decision,
            "estimate": 0.6, "interval": list(interval), "votes": 4, "n_pairs": 4, "run_id": "r"}


def test_worth_line_reads_the_label_counts():
    rows = [_row("live", 20), _row("labels-only", 25), _row("recorded", 25)]
    line = worth_line(rows)
    assert "the local jury saved 5 labels (20 vs 25 labels-only)" in line
    assert "the recorded verdicts bought nothing (25 labels, as labels-only)" in line
    assert "cost 1 more label (26 vs 25" in worth_line([_row("live", 26), _row("labels-only", 25)])
    assert worth_line([_row("live", 20), _row("labels-only", 25, "running")]) == ""
    undecided = worth_line([_row("live", 10, "undecided", (0.3, 0.8)), _row("labels-only", 10, "undecided")])
    assert "interval width 0.500" in undecided and "width 0.180" in undecided


def test_comparison_shows_in_live_view_and_report_with_the_recorded_note():
    lanes = [Lane("live", "local jury, voting live", "feature:length"), Lane("labels-only", "labels only", "none"),
             Lane("recorded", "recorded verdicts", "recorded:gpt-3.5-turbo, recorded:pandalm-7b",
                  who="the recorded GPT-3.5-turbo + PandaLM-7B verdicts")]
    for ln, n in zip(lanes, (21, 23, 22), strict=True):
        ln.status = {"labels": n, "decision": "better", "estimate": 0.6, "interval": [0.51, 0.7], "votes": 4,
                     "n_pairs": 4}
    st = LiveState(status={"name": "x", "n_pairs": 4, "votes": 4, "labels": 21, "interval": [0.51, 0.7],
                           "estimate": 0.6, "decision": "better", "judges": ["feature:length"]}, lanes=lanes,
                   recorded_note=PANDALM_NOTE)
    from rich.console import Console

    con = Console(width=160, record=True)
    con.print(render_live(st))
    text = con.export_text()
    assert "side by side" in text and "recorded:pandalm-7b" in text and "recorded, not computed" in text
    assert "saved 2 labels (21 vs 23 labels-only)" in " ".join(text.split())
    html = comparison_html([_row("live", 21), _row("labels-only", 23), _row("recorded", 22)],
                           {"recorded": "r-recorded.html"}, 0.05, PANDALM_NOTE)
    assert '<a href="r-recorded.html">' in html and "<b>21</b>" in html and "<b>23</b>" in html
    assert "recorded, not computed" in html and "Apache-2.0" in html


def test_worth_line_names_the_recorded_judges_and_the_share_each_run_measured():
    """The worth line reads each run's status: its label count against labels-only, and the share of label variance
    its judges explain as that run measured it (status judges_value: "jury" when there are several judges)."""
    jury = Lane("live", "local jury", "feature:length, feature:coverage", who="the local jury")
    ref = Lane("labels-only", "labels only", "none")
    rec = Lane("recorded", "recorded verdicts", "recorded:gpt-3.5-turbo, recorded:pandalm-7b",
               who="the recorded GPT-3.5-turbo + PandaLM-7B verdicts")
    value = {"value": 0.27, "interval": [0.14, 0.39], "level": 0.9, "labels": 95}
    jury.status = {"labels": 149, "decision": "better", "interval": [0.5, 0.68],
                   "judges_value": {"feature:length": {"value": 0.2}, "feature:coverage": {"value": 0.0},
                                    "jury": {"value": 0.0, "interval": [0.0, 0.06], "level": 0.9, "labels": 149}}}
    ref.status = {"labels": 146, "decision": "better", "interval": [0.5, 0.7]}
    rec.status = {"labels": 95, "decision": "better", "interval": [0.5, 0.72],
                  "judges_value": {"recorded:gpt-3.5-turbo": {}, "recorded:pandalm-7b": {}, "jury": value}}
    rows = comparison_rows([jury, ref, rec])
    assert rows[2]["value"] == value and rows[1]["value"] is None
    line = worth_line(rows)
    assert ("the recorded GPT-3.5-turbo + PandaLM-7B verdicts saved 51 labels (95 vs 146 labels-only); the votes "
            "explain 0.27 of the label variance in this run (90%: 0.14–0.39)") in line
    assert ("the local jury cost 3 more labels (149 vs 146 labels-only); the votes explain no measurable share of "
            "the label variance in this run (90%: 0.00–0.06)") in line
