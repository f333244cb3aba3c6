"""The demo's pieces that need no service: the packaged pool, the simulated annotator's blind mapping, the view."""

from __future__ import annotations

import numpy as np
import pytest

from services.demo import LiveState, SimulatedAnnotator, demo_items, interval_bar, render_live, select_pool


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
