"""Who may label what (issue 12, item 1): labels come from lease holders, or from annotation tools for pairs the
sampler drew; anything else is refused and changes nothing. RunService on a real embedded Redis."""

from __future__ import annotations

import pytest

from tiebreak.services.errors import Conflict, Forbidden
from tiebreak.services.runs import OVERALL, RunService
from tiebreak.services.store import RedisStore


@pytest.fixture
def clock():
    """The lease clock (RunService(clock=...)): tests move it instead of sleeping."""
    return [2_000_000.0]


def _run(svc: RunService, n: int = 40, **kw) -> str:
    pairs = [{"id": f"p{i}", "prompt": f"q{i}", "base": f"b{i}", "tuned": f"t{i}", "judge_votes": None}
             for i in range(n)]
    return svc.create_run({"name": "intake", "pairs": pairs, "judges": [], "seed": 1, **kw})


def _snapshot(svc: RunService, store: RedisStore, rid: str) -> tuple:
    st = svc.status(rid)
    return (st["labels"], st["annotations"], st["pending"], len(store.load_labels(rid)),
            sorted(store.load_leases(rid)), len(store.load_ops(rid)))


def test_label_for_a_pair_never_handed_out_is_refused_and_changes_nothing(store, clock):
    svc = RunService(store, clock=lambda: clock[0])
    rid = _run(svc, budget=3)
    before = _snapshot(svc, store, rid)
    for lab in ({"pair_id": "p5", "annotator": "mallory", "verdict": "tie"},
                {"pair_id": "p5", "annotator": "mallory", "verdict": "tie", "lease_id": "made-up"},
                {"pair_id": "p6", "annotator": "mallory", "verdict": "left", "source": "label-studio"}):
        with pytest.raises(Conflict) as e:
            svc.submit_label(rid, lab)
        assert e.value.field in ("lease_id", "pair_id") and "not stored" in e.value.msg or "not handed" in e.value.msg
    assert _snapshot(svc, store, rid) == before
    assert svc.runtime(rid).comps[OVERALL].labels == {}
    # no stall, no budget used: the run hands out pairs and decides only on real labels
    v = svc.next_pair(rid, "alice")
    assert v is not None
    r = svc.submit_label(rid, {"pair_id": v["pair_id"], "annotator": "alice", "verdict": "left",
                               "lease_id": v["lease_id"]})
    assert r["accepted"] and r["labels"] == 1


def test_label_for_a_pair_leased_to_someone_else_is_refused(store, clock):
    svc = RunService(store, clock=lambda: clock[0])
    rid = _run(svc)
    a = svc.next_pair(rid, "alice")
    with pytest.raises(Conflict):          # bob holds no lease on it
        svc.submit_label(rid, {"pair_id": a["pair_id"], "annotator": "bob", "verdict": "right"})
    with pytest.raises(Forbidden):         # alice's lease is not bob's
        svc.submit_label(rid, {"pair_id": a["pair_id"], "annotator": "bob", "verdict": "right",
                               "lease_id": a["lease_id"]})
    with pytest.raises(Conflict):          # a tool cannot take a pair leased to someone
        svc.submit_label(rid, {"pair_id": a["pair_id"], "annotator": "ls:9", "verdict": "right",
                               "source": "label-studio"})
    assert svc.status(rid)["annotations"] == 0
    r = svc.submit_label(rid, {"pair_id": a["pair_id"], "annotator": "alice", "verdict": "left"})
    assert r["accepted"] and not r["duplicate"] and r["labels"] == 1
    # idempotent repeat, once
    r = svc.submit_label(rid, {"pair_id": a["pair_id"], "annotator": "alice", "verdict": "right",
                               "lease_id": a["lease_id"]})
    assert r["duplicate"] and r["labels"] == 1
    assert svc.status(rid)["annotations"] == 1


def test_tool_labels_need_a_drawn_pair_that_still_needs_a_label(store, clock):
    svc = RunService(store, clock=lambda: clock[0])
    rid = _run(svc)
    batch = svc.draw_batch(rid, 3)
    drawn = [p["id"] for p, _, _ in batch]
    undrawn = next(f"p{i}" for i in range(40) if f"p{i}" not in drawn)
    with pytest.raises(Conflict):
        svc.submit_label(rid, {"pair_id": undrawn, "annotator": "ls:1", "verdict": "tie", "source": "label-studio"})
    r = svc.submit_label(rid, {"pair_id": drawn[0], "annotator": "ls:1", "verdict": "tie", "source": "label-studio"})
    assert r["accepted"] and r["labels"] == 1
    with pytest.raises(Conflict):          # k = 1: the pair has its label; a second tool user changes nothing
        svc.submit_label(rid, {"pair_id": drawn[0], "annotator": "argilla:2", "verdict": "left",
                               "source": "argilla"})
    assert svc.status(rid)["annotations"] == 1


def test_expired_lease_grace_then_refused_and_deleted_from_redis(store, clock):
    svc = RunService(store, lease_ttl_s=100, clock=lambda: clock[0])
    rid = _run(svc)
    a = svc.next_pair(rid, "alice")
    b = svc.next_pair(rid, "bob")
    clock[0] += 150                        # expired, within the grace (one more TTL), not reissued
    assert a["lease_id"] in store.load_leases(rid)
    r = svc.submit_label(rid, {"pair_id": a["pair_id"], "annotator": "alice", "verdict": "left",
                               "lease_id": a["lease_id"]})
    assert r["accepted"] and not r["duplicate"]
    clock[0] += 100                        # bob's lease is past its grace
    with pytest.raises(Conflict):
        svc.submit_label(rid, {"pair_id": b["pair_id"], "annotator": "bob", "verdict": "left",
                               "lease_id": b["lease_id"]})
    svc.next_pair(rid, "carol")            # any write of the run deletes leases past their grace
    assert b["lease_id"] not in store.load_leases(rid) and a["lease_id"] not in store.load_leases(rid)
    assert svc.status(rid)["annotations"] == 1
    assert RunService(store, clock=lambda: clock[0]).status(rid) == svc.status(rid)      # a restart agrees
