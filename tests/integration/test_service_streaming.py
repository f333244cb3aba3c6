"""Streaming runs through RunService on a real embedded Redis: pairs are labellable while judges still vote.

The judge pipeline is played by the test (``RunService.add_votes`` is the pipeline's call), so votes can be made
to arrive in any order relative to labels."""

from __future__ import annotations

import numpy as np
import pytest

from tiebreak.services.runs import OVERALL, RunService
from tiebreak.services.runs.shared_draws import MAX_DRAWN_UNGENERATED


def _pairs(n, prefix="p"):
    return [{"id": f"{prefix}{i}", "prompt": f"question {i}", "base": f"base answer {i}",
             "tuned": f"tuned answer {i}"} for i in range(n)]


def _vote(i: int, criteria=("overall",)) -> dict:
    p = 0.8 if i % 4 else 0.3          # an informative judge: tuned wins 3 pairs in 4 (see _tuned_wins)
    return {c: [p, 1 - p] for c in criteria}


def _tuned_wins(i: int) -> bool:
    return i % 4 != 0


def _label(svc, rid, k, annotator="a", criteria=()):
    done = 0
    for _ in range(k):
        v = svc.next_pair(rid, annotator)
        if v is None:
            break
        i = int(v["pair_id"][1:])
        tuned_left = v["left"].startswith("tuned")
        verdict = "left" if tuned_left == _tuned_wins(i) else "right"
        svc.submit_label(rid, {"pair_id": v["pair_id"], "annotator": annotator, "verdict": verdict,
                               "lease_id": v["lease_id"], "criteria": {c: verdict for c in criteria}})
        done += 1
    return done


def test_labels_before_any_vote_and_votes_out_of_order_reload_exactly(store):
    svc = RunService(store)      # no pipeline: the test delivers the votes
    n = 400
    rid = svc.create_run({"name": "s", "pairs": _pairs(n), "judges": ["judge-a", "judge-b"], "seed": 3,
                          "criteria": ["tone"]})
    st = svc.status(rid)
    assert st["status"] == "judging" and st["votes"] == 0
    assert _label(svc, rid, 8, criteria=["tone"]) == 8                     # labels before any vote
    rng = np.random.default_rng(0)
    order = rng.permutation(n)
    crit = ("overall", "tone")
    for chunk in np.array_split(order[:300], 7):        # votes out of order, between labels
        svc.add_votes(rid, {int(i): _vote(int(i), crit) for i in chunk})
        _label(svc, rid, 6, criteria=["tone"])
    st = svc.status(rid)
    assert st["status"] == "judging" and st["votes"] == 300
    ov = svc.runtime(rid).comps[OVERALL]
    assert ov.config.method == "active" and ov.n_voted == 300
    assert ov.voted.sum() > 0                          # a refit has put some votes to use
    assert svc.runtime(rid).comps["tone"].votes.shape[1] == 2   # the criterion streams votes too
    assert "<html" in svc.report_html(rid).lower()       # the report renders mid-stream
    before = svc.status(rid)
    svc2 = RunService(store)                            # a fresh process: snapshot + op log replay
    rt2 = svc2.runtime(rid)
    replayed = [op for op in store.load_ops(rid)[rt2.ops_at_snapshot:] if op.startswith('["votes"')]
    assert replayed                                     # the votes' arrival is part of what is replayed
    after = svc2.status(rid)
    assert after.pop("estimate") == pytest.approx(before.pop("estimate"), rel=1e-12)
    assert after == before
    for name, c1 in svc.runtime(rid).comps.items():
        c2 = svc2.runtime(rid).comps[name]
        assert [d.item for d in c1.draws] == [d.item for d in c2.draws]
        np.testing.assert_array_equal(c1.voted, c2.voted)
        np.testing.assert_array_equal(c1.g, c2.g)
        assert c1.n_voted == c2.n_voted
    svc.close()
    svc2.add_votes(rid, {int(i): _vote(int(i), crit) for i in order[300:]})
    assert svc2.status(rid)["status"] == "ready" and svc2.status(rid)["votes"] == n
    _label(svc2, rid, 200, criteria=["tone"])
    assert svc2.status(rid)["decision"] == "better"
    svc2.close()


def test_first_pair_is_served_before_any_vote_and_added_pairs_stream_too(store):
    svc = RunService(store)
    rid = svc.create_run({"name": "s", "pairs": _pairs(50), "judges": ["judge-a"], "seed": 4})
    assert svc.next_pair(rid, "a") is not None
    svc.add_votes(rid, {i: {"overall": [0.7]} for i in range(50)})
    assert svc.status(rid)["status"] == "ready"
    svc.add_pairs(rid, _pairs(10, prefix="q"))
    st = svc.status(rid)
    assert st["status"] == "judging" and st["n_pairs"] == 60 and st["votes"] == 50
    ov = svc.runtime(rid).comps[OVERALL]
    assert ov.n_items == 60 and not ov.voted[50:].any() and ov.voted[:50].all()
    svc.add_votes(rid, {i: {"overall": [0.6]} for i in range(50, 60)})
    assert svc.status(rid)["status"] == "ready" and ov.n_voted == 60
    svc.close()


def test_status_shows_generated_judged_and_labels(store):
    svc = RunService(store)
    rid = svc.create_run({"name": "s", "pairs": _pairs(30), "judges": ["judge-a"], "seed": 5})
    st = svc.status(rid)
    assert (st["generated"], st["judged"], st["labels"]) == (30, 0, 0)
    _label(svc, rid, 3)
    svc.add_votes(rid, {i: {"overall": [0.7]} for i in range(12)})
    st = svc.status(rid)
    assert (st["generated"], st["judged"], st["labels"], st["votes"]) == (30, 12, 3, 12)
    assert st["progress"]["labels"] == 3 and st["progress"]["judged"] == 12
    from tiebreak.services.api.models import RunStatus
    assert RunStatus.model_validate(st).model_dump()["judged"] == 12   # the API's response model keeps them
    gen = svc.create_run({"name": "g", "generate": {"base": "b.gguf", "tuned": "t.gguf", "prompts": [
        {"id": "x", "text": "hi"}]}, "seed": 6})
    st = svc.status(gen)
    assert st["status"] == "generating" and (st["generated"], st["judged"], st["labels"]) == (0, 0, 0)
    svc.close()


def _gen_run(svc, n, judges=(), seed=7):
    prompts = [{"id": f"p{i}", "text": f"question {i}"} for i in range(n)]
    return svc.create_run({"name": "g", "generate": {"base": "b.gguf", "tuned": "t.gguf", "prompts": prompts},
                           "judges": list(judges), "seed": seed})


def _outputs(pids):
    return {pid: (f"base answer {pid[1:]}", f"tuned answer {pid[1:]}") for pid in pids}


def test_generate_run_is_drawn_from_the_start_and_serves_a_drawn_pair_once_its_outputs_exist(store):
    """The test plays the generator (``outputs_ready`` is the pipeline's call): the run draws over all N prompts
    at once; a drawn pair whose outputs are not made yet is asked for (``generation_wanted``) and `next`
    says "retry" until they exist; other pairs' outputs do not make it leasable."""
    svc = RunService(store)
    rid = _gen_run(svc, 40)
    st = svc.status(rid)
    assert st["status"] == "generating" and (st["n_pairs"], st["generated"], st["labels"]) == (40, 0, 0)
    assert svc.generation_wanted(rid) == []
    assert svc.next_pair(rid, "a") == {"retry_after": 2.0}        # drawn, not generated yet
    ahead = svc.generation_wanted(rid)
    assert len(ahead) == MAX_DRAWN_UNGENERATED == 2                 # drawn ahead while none is ready, no more
    assert svc.next_pair(rid, "a") == {"retry_after": 2.0}
    assert svc.next_pair(rid, "b") == {"retry_after": 2.0}
    assert svc.generation_wanted(rid) == ahead                      # in draw order: the first drawn first
    assert [d.item for d in svc.runtime(rid).comps[OVERALL].draws] == [int(p[1:]) for p in ahead]
    others = [f"p{i}" for i in range(40) if f"p{i}" not in ahead]
    assert svc.outputs_ready(rid, _outputs(others[:5]), made=10) == 35
    assert svc.next_pair(rid, "a") == {"retry_after": 2.0}         # undrawn pairs' outputs change nothing
    assert svc.status(rid)["generated"] == 5 and svc.status(rid)["progress"]["generated"] == 10
    svc.outputs_ready(rid, _outputs([ahead[1]]))
    v = svc.next_pair(rid, "a")
    assert v["pair_id"] == ahead[1] and {v["left"], v["right"]} == set(_outputs([ahead[1]])[ahead[1]])
    svc.submit_label(rid, {"pair_id": v["pair_id"], "annotator": "a", "verdict": "left",
                           "lease_id": v["lease_id"]})
    assert svc.runtime(rid).comps[OVERALL].processed == 0   # in draw order: it waits for the first drawn pair
    before = svc.status(rid)
    svc2 = RunService(store)                   # a restart mid-generation: the same run, the same waits
    assert svc2.status(rid) == before
    assert svc2.generation_wanted(rid) == [ahead[0]]
    svc.close()
    svc2.outputs_ready(rid, _outputs([ahead[0]]))
    v = svc2.next_pair(rid, "b")
    assert v["pair_id"] == ahead[0]
    svc2.submit_label(rid, {"pair_id": v["pair_id"], "annotator": "b", "verdict": "right",
                            "lease_id": v["lease_id"]})
    assert svc2.status(rid)["labels"] == 2 and svc2.runtime(rid).comps[OVERALL].processed == 2
    assert svc2.outputs_ready(rid, _outputs([f"p{i}" for i in range(40)])) == 0
    st = svc2.status(rid)
    assert st["status"] == "ready" and st["generated"] == 40
    assert _label(svc2, rid, 3) == 3                 # plain labelling from here on
    svc2.close()
    svc3 = RunService(store)
    assert svc3.runtime(rid).ungenerated == set() and svc3.status(rid)["generated"] == 40
    svc3.close()


def test_generate_run_with_judges_goes_on_to_judging_and_adding_pairs_waits_for_generation(store):
    svc = RunService(store)
    rid = _gen_run(svc, 12, judges=["judge-a"])
    from tiebreak.services.errors import Conflict
    with pytest.raises(Conflict):
        svc.add_pairs(rid, _pairs(2, prefix="q"))
    svc.outputs_ready(rid, _outputs([f"p{i}" for i in range(12)]))
    st = svc.status(rid)
    assert st["status"] == "judging" and st["generated"] == 12 and st["judged"] == 0
    assert len(svc.unvoted_pairs(rid)) == 12
    assert all(p["base"].startswith("base answer") for _, p in svc.unvoted_pairs(rid))
    svc.add_votes(rid, {i: {"overall": [0.7]} for i in range(12)})
    assert svc.status(rid)["status"] == "ready"
    svc.close()


def test_a_run_decided_before_its_outputs_exist_keeps_saying_how_many_were_made_after_a_reload(store):
    svc = RunService(store)
    prompts = [{"id": f"p{i}", "text": f"question {i}"} for i in range(20)]
    rid = svc.create_run({"name": "g", "generate": {"base": "b.gguf", "tuned": "t.gguf", "prompts": prompts},
                          "budget": 1, "seed": 8})
    assert svc.next_pair(rid, "a") == {"retry_after": 2.0}
    svc.outputs_ready(rid, _outputs(svc.generation_wanted(rid) + ["p0", "p1"]))
    assert _label(svc, rid, 1) == 1
    assert svc.run_finished(rid) and svc.status(rid)["decision"] == "undecided"
    svc.set_status(rid, "ready")                   # what the pipeline does when it stops generating
    made = svc.status(rid)["generated"]
    assert 1 <= made <= 3
    svc.close()
    svc2 = RunService(store)
    st = svc2.status(rid)
    assert st["status"] == "ready" and st["generated"] == made and svc2.next_pair(rid, "a") is None
    svc2.close()
