"""Runs on one draw sequence (services.runs.shared_draws) through RunService on a real embedded Redis: criteria
and slices follow the overall question's draws, one label serves every question, a restart resumes exactly,
and runs stored before shared draws (no ``draws`` flag) load and continue on their old path."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tiebreak.services.errors import BadInput, Conflict
from tiebreak.services.runs import OVERALL, RunService

CRITERIA = ["accuracy", "tone"]


def _pairs(n: int, votes: bool = True):
    rng = np.random.default_rng(0)
    return [{"id": f"p{i}", "prompt": f"question {i}", "base": f"base answer {i}", "tuned": f"tuned answer {i}",
             "slices": ["edge-case"] if i < 40 else ["billing"],
             **({"judge_votes": {"j1": float(np.clip((0.8 if _truth(i)[OVERALL] else 0.3) + rng.normal(0, 0.1),
                                                     0, 1))}}
                if votes else {})}
            for i in range(n)]


def _truth(i: int) -> dict[str, bool]:
    """Whether the tuned model wins pair i, per question: overall 3 in 4 of the billing pairs and no edge case
    (pairs 0-39), accuracy always, tone every other pair."""
    return {OVERALL: i >= 40 and i % 4 != 0, "accuracy": True, "tone": i % 2 == 0}


def _label(svc, rid, k, annotator="a", criteria=CRITERIA):
    """Label up to k handed-out pairs (overall and the given criteria); the pair ids handed out, in order."""
    seen = []
    for _ in range(k):
        v = svc.next_pair(rid, annotator)
        if v is None:
            break
        i = int(v["pair_id"][1:])
        tuned_left = v["left"].startswith("tuned")
        truth = _truth(i)
        verdict = {q: "left" if tuned_left == won else "right" for q, won in truth.items()}
        svc.submit_label(rid, {"pair_id": v["pair_id"], "annotator": annotator, "verdict": verdict[OVERALL],
                               "lease_id": v["lease_id"], "criteria": {c: verdict[c] for c in criteria}})
        seen.append(v["pair_id"])
    return seen


def _ops(store, rid):
    return [json.loads(o) for o in store.r.lrange(store.k(rid, "ops"), 0, -1)]


def test_criteria_and_slices_share_the_overall_draws_one_label_serves_every_question(store):
    svc = RunService(store)
    rid = svc.create_run({"name": "s", "pairs": _pairs(160), "criteria": CRITERIA, "seed": 5, "budget": 100})
    st = svc.status(rid)
    assert st["multiplicity"] == "holm" and st["alpha_split"].startswith("holm over 9 questions")
    seen = _label(svc, rid, 400)
    rt = svc.runtime(rid)
    fam = rt.family
    assert fam is not None and rt.comps is fam.comps
    leader = [d.item for d in fam.leader.draws]
    handed = [rt.pair_index[p][0] for p in seen]
    # every pair handed out was drawn by the overall question's design, each once: no criterion-only pair
    assert set(handed) <= set(leader) and len(handed) == len(set(handed))
    for name in CRITERIA:     # every question took exactly the overall draws, and the same labels
        assert [d.item for d in fam.comps[name].draws] == leader
        assert set(fam.comps[name].labels) == set(fam.leader.labels) == set(handed)
    ops = _ops(store, rid)
    assert {o[0] for o in ops} <= {"fnext", "flabels"}
    # one label (overall + both criteria verdicts) fed all three questions in one step
    assert all(list(o[2]) == [OVERALL, *CRITERIA] for o in ops if o[0] == "flabels")
    st = svc.status(rid)
    assert (st["decision"], st["slices"]["edge-case"]["decision"], st["slices"]["billing"]["decision"]) == \
        ("better", "worse", "better")
    assert {st["criteria"]["accuracy"]["slices"][s]["decision"] for s in ("edge-case", "billing")} == {"better"}
    assert st["criteria"]["tone"]["decision"] == "undecided"        # theta = 1/2: the budget ends the run
    assert st["labels"] == len(handed) == 100
    assert st["criteria"]["tone"]["labels"] == len(handed)
    # the status is the family's: each question's interval and verdict as the family reports them
    fs = fam.status()
    for c in CRITERIA:
        q = fs.question(c, "billing")
        assert st["criteria"][c]["slices"]["billing"]["interval"] == [q.lower, q.upper]
        assert st["criteria"][c]["slices"]["billing"]["decision"] == q.decision.value
    assert st["finished"] is fs.finished


def test_shared_run_restarted_mid_run_hands_out_the_same_pairs(store):
    """Two runs, same seed and votes: one labelled straight through, one restarted (snapshot + op log replayed)
    twice mid-run, with a lease outstanding and a streamed vote batch; the same pairs come out in the same
    order and the states end identical."""
    spec = {"name": "r", "pairs": _pairs(160), "criteria": CRITERIA, "seed": 11, "budget": 60}
    svc = RunService(store)
    straight = svc.create_run(dict(spec))
    restarted = svc.create_run(dict(spec))
    a = _label(svc, straight, 60)
    b = _label(svc, restarted, 17)
    for k in (2, 3):
        lease = svc.next_pair(restarted, "holder")     # outstanding across the restart
        before = svc.runtime(restarted).family.to_dict(include_votes=False)
        st = svc.status(restarted)
        svc.close()
        svc = RunService(store)
        rt = svc.runtime(restarted)
        assert rt.ops_total > rt.ops_at_snapshot      # the reload replayed logged ops past the snapshot
        assert rt.family.to_dict(include_votes=False) == before
        assert svc.status(restarted) == st
        assert svc.next_pair(restarted, "holder")["lease_id"] == lease["lease_id"]
        i = int(lease["pair_id"][1:])
        verdict = "left" if lease["left"].startswith("tuned") == _truth(i)[OVERALL] else "right"
        svc.submit_label(restarted, {"pair_id": lease["pair_id"], "annotator": "holder", "verdict": verdict,
                                     "lease_id": lease["lease_id"],
                                     "criteria": {c: ("left" if lease["left"].startswith("tuned") == _truth(i)[c]
                                                      else "right") for c in CRITERIA}})
        b += [lease["pair_id"]] + _label(svc, restarted, 10 * k)
    b += _label(svc, restarted, 60)
    assert a == b and len(a) == 60
    sa = svc.runtime(straight).family.to_dict(include_votes=False)
    sb = svc.runtime(restarted).family.to_dict(include_votes=False)
    assert sa == sb


def test_streamed_votes_replay_exactly_on_a_shared_run(store):
    svc = RunService(store)
    n = 120
    rid = svc.create_run({"name": "v", "pairs": [{k: v for k, v in p.items() if k != "slices"}
                                                 for p in _pairs(n, votes=False)],
                          "judges": ["judge-a"], "criteria": ["tone"], "seed": 3})
    assert svc.status(rid)["status"] == "judging"
    _label(svc, rid, 6, criteria=["tone"])               # labels before any vote
    for lo in range(0, n, 40):                           # votes arrive in batches between labels
        svc.add_votes(rid, {i: {OVERALL: [0.8 if i % 4 else 0.3], "tone": [0.6]} for i in range(lo, lo + 40)})
        _label(svc, rid, 5, criteria=["tone"])
    before = svc.runtime(rid).family.to_dict(include_votes=False)
    assert any(o[0] == "votes" for o in _ops(store, rid))
    svc.close()
    fresh = RunService(store)
    assert fresh.runtime(rid).family.to_dict(include_votes=False) == before
    assert fresh.status(rid)["votes"] == n


def test_old_format_run_without_the_flag_loads_and_continues(store, monkeypatch):
    """A run stored before shared draws (meta without ``draws``): per-criterion comparisons, Bonferroni,
    "next"/"offer" ops; it reloads and keeps going on that path."""
    real_create = store.create_run

    def create_old(rid, meta, now):
        return real_create(rid, {k: v for k, v in meta.items() if k != "draws"}, now)

    monkeypatch.setattr(store, "create_run", create_old)
    svc = RunService(store)
    rid = svc.create_run({"name": "old", "pairs": _pairs(160), "criteria": CRITERIA, "seed": 5})
    monkeypatch.undo()
    assert "draws" not in store.get_meta(rid)
    _label(svc, rid, 12)
    rt = svc.runtime(rid)
    assert rt.family is None and list(rt.comps) == [OVERALL, *CRITERIA]
    st = svc.status(rid)
    assert st["multiplicity"] is None and st["alpha_split"].startswith("bonferroni over 9 questions")
    states = {n: c.to_dict(include_votes=False) for n, c in rt.comps.items()}
    svc.close()
    svc = RunService(store)
    rt = svc.runtime(rid)
    assert rt.family is None and {n: c.to_dict(include_votes=False) for n, c in rt.comps.items()} == states
    assert svc.status(rid) == st
    seen = _label(svc, rid, 400)
    assert seen and svc.status(rid)["decision"] == "better"
    assert {o[0] for o in _ops(store, rid)} <= {"next", "offer"}
    assert "holm" not in svc.report_html(rid)


def test_bad_labels_on_a_shared_run_are_refused_and_change_nothing(store):
    svc = RunService(store)
    rid = svc.create_run({"name": "b", "pairs": _pairs(60), "criteria": CRITERIA, "seed": 2})
    v = svc.next_pair(rid, "a")
    n_ops = len(_ops(store, rid))
    state = svc.runtime(rid).family.to_dict(include_votes=False)
    with pytest.raises(BadInput) as e:
        svc.submit_label(rid, {"pair_id": v["pair_id"], "annotator": "a", "verdict": "left",
                               "lease_id": v["lease_id"], "criteria": {"humour": "left"}})
    assert e.value.field == "criteria.humour" and "accuracy" in e.value.msg
    with pytest.raises(BadInput) as e:
        svc.submit_label(rid, {"pair_id": v["pair_id"], "annotator": "a", "verdict": "left",
                               "lease_id": v["lease_id"], "criteria": {"tone": "sideways"}})
    assert e.value.field == "criteria.tone"
    with pytest.raises(Conflict):
        svc.submit_label(rid, {"pair_id": "p59", "annotator": "b", "verdict": "left"})
    assert len(_ops(store, rid)) == n_ops
    assert svc.runtime(rid).family.to_dict(include_votes=False) == state
    with pytest.raises(Conflict):     # annotation tools may label drawn pairs only
        svc.submit_label(rid, {"pair_id": "p58", "annotator": "ls", "verdict": "left", "source": "label-studio"})


def test_a_criterion_left_out_holds_its_question_and_the_run_stops_drawing(store):
    """Criteria are optional in a label; a question never skips a draw, so one whose pair got its labels
    without its verdict stays running, and once only such questions are left no more pairs are handed out
    (instead of the whole pool)."""
    svc = RunService(store)
    rid = svc.create_run({"name": "m", "pairs": _pairs(160), "criteria": ["tone"], "seed": 7})
    first = _label(svc, rid, 1, criteria=[])            # no tone verdict on the first pair
    seen = first + _label(svc, rid, 400, criteria=["tone"])
    st = svc.status(rid)
    assert st["decision"] == "better" and st["criteria"]["tone"]["decision"] == "running"
    assert st["criteria"]["tone"]["labels"] == len(seen) - 1 and st["finished"] is False
    assert len(seen) < 160 and svc.next_pair(rid, "b") is None
    assert svc.draw_batch(rid, 5) == []


def test_pairs_added_mid_run_join_every_question_and_reload_exactly(store):
    svc = RunService(store)
    pairs = _pairs(200)
    rid = svc.create_run({"name": "g", "pairs": pairs[:120], "criteria": CRITERIA, "seed": 9})
    _label(svc, rid, 10)
    assert svc.add_pairs(rid, pairs[120:])["n_pairs"] == 200
    fam = svc.runtime(rid).family
    assert all(c.n_items == 200 and c.pool_version == 1 for c in fam.comps.values())
    assert svc.status(rid)["slices"]["billing"]["n_pairs"] == 160
    _label(svc, rid, 10)
    before = fam.to_dict(include_votes=False)
    svc.close()
    svc = RunService(store)
    assert svc.runtime(rid).family.to_dict(include_votes=False) == before
    assert _label(svc, rid, 400) and svc.status(rid)["pool_version"] == 1
