"""Slices through RunService on a real (embedded) Redis: per-slice verdicts, blind views, errors said up front."""

from __future__ import annotations

import numpy as np
import pytest

from tiebreak.services.errors import BadInput
from tiebreak.services.runs import RunService


def _pairs(n: int, tag=lambda i: ["edge-case"] if i < 60 else ["billing"], votes=True):
    rng = np.random.default_rng(0)
    return [{"id": f"p{i}", "prompt": f"question {i}", "base": f"base answer {i}", "tuned": f"tuned answer {i}",
             "judge_votes": {"j1": float(rng.uniform(0.3, 0.8))} if votes else None, "slices": tag(i)}
            for i in range(n)]


def _label_until_done(svc, rid, tuned_wins, annotator="a", limit=5000):
    seen = []
    for _ in range(limit):
        v = svc.next_pair(rid, annotator)
        if v is None:
            break
        seen.append(v)
        i = int(v["pair_id"].lstrip("p"))
        tuned_left = v["left"].startswith("tuned")
        verdict = "left" if tuned_left == tuned_wins(i) else "right"
        svc.submit_label(rid, {"pair_id": v["pair_id"], "annotator": annotator, "verdict": verdict,
                               "lease_id": v["lease_id"]})
    return seen


def test_worse_slice_is_found_blind_and_survives_a_restart(store):
    svc = RunService(store)
    rid = svc.create_run({"name": "s", "pairs": _pairs(240), "seed": 3})
    st = svc.status(rid)
    assert set(st["slices"]) == {"edge-case", "billing"} and st["finished"] is False
    assert st["alpha_split"].startswith("holm over 3 questions") and st["multiplicity"] == "holm"
    # the base model wins every edge case; the tuned one wins 3 in 4 of the rest
    views = _label_until_done(svc, rid, lambda i: i >= 60 and i % 4 != 0)
    assert views and all("edge" not in str(v) and "billing" not in str(v) and "slices" not in v for v in views)
    st = svc.status(rid)
    assert st["decision"] == "better"
    assert st["slices"]["edge-case"]["decision"] == "worse"
    assert st["slices"]["edge-case"]["interval"][1] <= 0.5
    assert st["slices"]["billing"]["decision"] == "better"
    assert st["finished"] is True and svc.next_pair(rid, "b") is None
    assert st["labels"] < 240
    assert RunService(store).status(rid) == st


def test_unknown_slice_of_interest_names_it(store):
    svc = RunService(store)
    with pytest.raises(BadInput) as e:
        svc.create_run({"name": "s", "pairs": _pairs(80), "slices_of_interest": ["billing", "refunds"]})
    assert "'refunds'" in e.value.msg and e.value.field == "slices_of_interest.1"


def test_too_many_slices_is_refused_with_the_fix(store):
    svc = RunService(store)
    with pytest.raises(BadInput) as e:
        svc.create_run({"name": "s", "pairs": _pairs(60, tag=lambda i: [f"t{i}"])})
    assert "slices_of_interest" in e.value.msg and e.value.field == "slices_of_interest"
    rid = svc.create_run({"name": "s", "pairs": _pairs(60, tag=lambda i: [f"t{i}"]),
                          "slices_of_interest": ["t1", "t2"]})
    assert set(svc.status(rid)["slices"]) == {"t1", "t2"}


def test_small_slice_is_warned_up_front_and_criteria_split_alpha(store):
    svc = RunService(store)
    rid = svc.create_run({"name": "s", "pairs": _pairs(100, tag=lambda i: ["tiny"] if i < 4 else ["big"]),
                          "criteria": ["tone"], "budget": 50})
    st = svc.status(rid)
    assert len(st["slice_warnings"]) == 1 and "'tiny' has 4 pairs" in st["slice_warnings"][0]
    assert st["alpha_split"].startswith("holm over 6 questions")
    # nothing established yet: every question at Holm's first step, its Bonferroni share
    assert st["criteria"]["tone"]["slices"]["big"]["alpha"] == pytest.approx(0.05 / 6)


def test_report_has_the_slice_table_and_forest_plot(store):
    svc = RunService(store)
    rid = svc.create_run({"name": "s", "pairs": _pairs(240), "seed": 4})
    _label_until_done(svc, rid, lambda i: i >= 60 and i % 4 != 0)
    html = svc.report_html(rid)
    assert "Per-slice verdicts" in html and 'aria-label="slice intervals against one half"' in html
    forest = html.split('aria-label="slice intervals against one half"')[1].split("</svg>")[0]
    assert "edge-case (60)" in forest and "billing (180)" in forest and forest.count("<circle") == 3
    assert "holm over 3 questions" in html


def test_report_without_slices_has_no_slice_section(store):
    svc = RunService(store)
    rid = svc.create_run({"name": "s", "pairs": _pairs(50, tag=lambda i: None), "seed": 4})
    assert svc.status(rid)["slices"] == {} and svc.status(rid)["alpha_split"] is None
    assert "Per-slice verdicts" not in svc.report_html(rid)


def test_experiment_checkpoints_give_per_slice_verdicts(store):
    from tiebreak.services.api.experiments import _RunServiceBackend
    from tiebreak.services.experiments import ExperimentService

    rs = RunService(store)
    svc = ExperimentService(_RunServiceBackend(rs))
    n = 200
    prompts = [{"id": str(i), "text": f"q{i}", "slices": ["edge-case"] if i < 50 else ["billing"]}
               for i in range(n)]
    exp = svc.create_experiment({"name": "e", "prompts": prompts, "judges": [], "protect_slices": ["edge-case"],
                                 "base": {"outputs": {str(i): f"base {i}" for i in range(n)}}})
    rid = svc.add_checkpoint(exp, {"checkpoint": "c1", "outputs": {str(i): f"tuned {i}" for i in range(n)}})["vs_base"]
    assert set(rs.status(rid)["slices"]) == {"edge-case", "billing"}
    _label_until_done(rs, rid, lambda i: i >= 50)     # base wins every edge case, tuned everything else
    sig = svc.signal(exp)
    view = sig["checkpoints"][0]["vs_base"]
    assert view["decision"] == "better"
    assert view["slices"]["edge-case"]["decision"] == "worse"
    assert view["slices"]["billing"]["decision"] == "better"
    # better overall, worse on the protected edge cases: never the best checkpoint, and training should stop
    assert (sig["stop"], sig["reason"], sig["best_checkpoint"]) == (True, "slice-regression", None)
    from tiebreak.services.experiments import ExperimentError

    with pytest.raises(ExperimentError):
        svc.create_experiment({"name": "e", "prompts": [{"id": "1", "text": "q", "slices": [""]}], "judges": [],
                               "base": {"outputs": {"1": "b"}}})
    with pytest.raises(ExperimentError) as e:
        svc.create_experiment({"name": "e", "prompts": prompts, "judges": [], "protect_slices": ["refunds"],
                               "base": {"outputs": {str(i): f"base {i}" for i in range(n)}}})
    assert e.value.field == "protect_slices" and "refunds" in str(e.value)
