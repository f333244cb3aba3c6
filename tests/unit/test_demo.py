"""The demo's pieces that need no service: the packaged pool, the simulated annotator's blind mapping, the view."""

from __future__ import annotations

import numpy as np
import pytest

from tiebreak.services.demo import (
    RECORDED_JUDGE,
    Lane,
    LiveState,
    SimulatedAnnotator,
    comparison_html,
    crowd_draws,
    demo_items,
    interval_bar,
    recorded_vote,
    render_live,
    select_pool,
    worth_line,
)


def test_demo_items_are_the_vicuna80_pair():
    items = demo_items()
    assert len(items) == 80 and len({it["id"] for it in items}) == 80
    assert all(it["prompt"] and it["base"] and it["tuned"] and it["human_votes"] for it in items)
    assert all(v in ("tuned", "base", "tie") for it in items for v in it["human_votes"])
    theta = np.mean([np.mean([{"tuned": 1, "base": 0, "tie": 0.5}[v] for v in it["human_votes"]]) for it in items])
    assert 0.66 < theta < 0.70   # the crowd prefers GPT-4 (tuned) on ~68% (shared/data README, QLoRA release)


def test_select_pool_spreads_over_categories():
    pool = select_pool(demo_items(), 40)
    assert len(pool) == 40 and len({it["category"] for it in pool}) >= 8
    with pytest.raises(ValueError):
        select_pool(demo_items(), 0)


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
    items = demo_items()
    a, b = crowd_draws(items, 0), crowd_draws(items, 0)
    assert a == b and set(a) == {it["id"] for it in items}
    assert all(a[it["id"]] in it["human_votes"] for it in items)
    assert crowd_draws(items, 1) != a      # the seed changes the draws


def test_recorded_vote_averages_both_gpt4_orders():
    assert recorded_vote({"recorded_judges": {"gpt-4(order 1)": "tuned", "gpt-4(order 2)": "tie"}}) == 0.75
    assert recorded_vote({"recorded_judges": {"gpt-4(order 1)": None}}) is None
    # every demo pair carries a recorded verdict (the recorded lane needs one per pair)
    assert all(recorded_vote(it) is not None for it in demo_items())


def _row(lane, labels, decision="better", interval=(0.52, 0.7)):
    return {"lane": lane, "title": lane, "judges": "j", "labels": labels, "decision": decision,
            "estimate": 0.6, "interval": list(interval), "votes": 4, "n_pairs": 4, "run_id": "r"}


def test_worth_line_reads_the_label_counts():
    rows = [_row("live", 20), _row("labels-only", 25), _row("recorded", 25)]
    line = worth_line(rows)
    assert "the local jury saved 5 labels (20 vs 25 labels-only)" in line
    assert "the recorded GPT-4 verdicts bought nothing (25 labels, as labels-only)" in line
    assert "cost 1 more label (26 vs 25" in worth_line([_row("live", 26), _row("labels-only", 25)])
    assert worth_line([_row("live", 20), _row("labels-only", 25, "running")]) == ""
    undecided = worth_line([_row("live", 10, "undecided", (0.3, 0.8)), _row("labels-only", 10, "undecided")])
    assert "interval width 0.500" in undecided and "width 0.180" in undecided


def test_comparison_shows_in_live_view_and_report_with_the_recorded_note():
    lanes = [Lane("live", "local jury, voting live", "feature:length"), Lane("labels-only", "labels only", "none"),
             Lane("recorded", "GPT-4 verdicts, recorded", RECORDED_JUDGE)]
    for ln, n in zip(lanes, (21, 23, 22), strict=True):
        ln.status = {"labels": n, "decision": "better", "estimate": 0.6, "interval": [0.51, 0.7], "votes": 4,
                     "n_pairs": 4}
    st = LiveState(status={"name": "x", "n_pairs": 4, "votes": 4, "labels": 21, "interval": [0.51, 0.7],
                           "estimate": 0.6, "decision": "better", "judges": ["feature:length"]}, lanes=lanes)
    from rich.console import Console

    con = Console(width=160, record=True)
    con.print(render_live(st))
    text = con.export_text()
    assert "side by side" in text and RECORDED_JUDGE in text and "recorded, not computed" in text
    assert "saved 2 labels (21 vs 23 labels-only)" in " ".join(text.split())
    html = comparison_html([_row("live", 21), _row("labels-only", 23), _row("recorded", 22)],
                           {"recorded": "r-recorded.html"}, 0.05)
    assert '<a href="r-recorded.html">' in html and "<b>21</b>" in html and "<b>23</b>" in html
    assert "recorded, not computed" in html
