"""judge_budget "auto" through the real RunService and the real judge pipeline (in-process workers, a real
``feature:length`` juror, real embedded Redis): a judge without signal on this run is stopped by its trial (its
votes do not agree with the labels at a checkpoint) or once its value interval shows it saves < 5 % of the
labels; a judge with signal votes on every pair."""

from __future__ import annotations

import numpy as np
import pytest

from tiebreak.services.pipeline import Pipeline
from tiebreak.services.runs import RunService
from tiebreak.services.runs.judge_budget import MIN_PAIRS, THRESHOLD, checkpoints
from tiebreak.services.store import RedisStore

N_PAIRS = 400
JUDGE = "feature:length"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    s = RedisStore.open(data_dir=tmp_path_factory.mktemp("redis"))
    yield s
    s.close()


def _pairs(seed: int) -> list[dict]:
    """Answers of random lengths, so the length juror's votes vary from pair to pair."""
    rng = np.random.default_rng(seed)
    return [{"id": f"p{i}", "prompt": f"question {i}", "base": "word " * int(rng.integers(5, 80)),
             "tuned": "word " * int(rng.integers(5, 80))} for i in range(N_PAIRS)]


def _label(svc: RunService, rid: str, pairs: list[dict], k: int, longer_wins: bool, seed: int) -> int:
    """k labels: the longer answer wins (the juror has signal) or a coin flip (it has none)."""
    rng = np.random.default_rng(seed)
    done = 0
    for _ in range(k):
        v = svc.next_pair(rid, "ann")
        if v is None:
            break
        p = pairs[int(v["pair_id"][1:])]
        tuned_wins = len(p["tuned"]) > len(p["base"]) if longer_wins else bool(rng.integers(2))
        tuned_left = v["left"] == p["tuned"]
        verdict = "left" if tuned_left == tuned_wins else "right"
        svc.submit_label(rid, {"pair_id": v["pair_id"], "annotator": "ann", "verdict": verdict,
                               "lease_id": v["lease_id"]})
        done += 1
    return done


def _run(store: RedisStore, longer_wins: bool, budget: str = "auto", labels: int = 200
         ) -> tuple[RunService, str, dict]:
    svc = RunService(store)          # no pipeline attached yet: the labels come first (a streaming run)
    pairs = _pairs(1)
    rid = svc.create_run({"name": "budget", "pairs": pairs, "judges": [JUDGE], "seed": 5, "alpha": 0.001,
                          "judge_budget": budget})
    assert svc.status(rid)["status"] == "judging"
    assert _label(svc, rid, pairs, labels, longer_wins, seed=2) == labels
    Pipeline(svc, mode="local", batch_size=4).run(rid)      # the real pipeline, in this thread
    return svc, rid, svc.status(rid)


def test_a_judge_without_signal_is_stopped_and_says_so(store):
    svc, rid, st = _run(store, longer_wins=False)
    v = st["judges_value"][JUDGE]
    assert st["judge_budget"] == "auto"
    assert v["state"] == "stopped-worthless" and v["stopped_by"] == "trial", v
    assert v["interval"] == v["stopped_at_interval"]        # no label nor vote of it came after the stop
    assert v["stopped_at_labels"] == 200
    # the labelled pairs are voted first, a batch of 4 at a time: it stopped within a batch of a checkpoint
    # (20, 40, ... labelled pairs in a pool of 400), well under the pool, and the run still became ready
    assert any(0 <= v["pairs_voted"] - k < 4 for k in checkpoints(200, N_PAIRS)), v
    assert v["pairs_voted"] <= 0.1 * N_PAIRS
    assert st["status"] == "ready" and st["judged"] == N_PAIRS
    assert v["cpu_s"] >= 0.0
    # the report says what the judge cost and what it saved
    html = svc.report_html(rid)
    assert "What the judges were worth" in html and "stopped-worthless (trial)" in html
    # the stop holds after a reload (a restart): the pipeline does not start the judge again
    svc.release(rid)
    assert svc.judges_stopped(rid) == {JUDGE}


def test_a_judge_with_signal_keeps_voting(store):
    svc, rid, st = _run(store, longer_wins=True, labels=60)
    v = st["judges_value"][JUDGE]
    assert v["state"] == "finished" and v["pairs_voted"] == N_PAIRS and "eta_s" not in v
    assert v["value"] > 0.5 and v["interval"][0] > THRESHOLD
    assert v["labels_saved"] > 60
    html = svc.report_html(rid)
    assert "What the judges were worth" in html and "finished" in html


def test_budget_all_never_stops_a_worthless_judge(store):
    _, _, st = _run(store, longer_wins=False, budget="all")
    v = st["judges_value"][JUDGE]
    assert v["state"] == "finished" and v["pairs_voted"] == N_PAIRS
    assert v["interval"][1] < 0.2            # it is worth little, and still judged everything (today's behaviour)


def test_bad_judge_budget_is_a_422_naming_the_field():
    from pydantic import ValidationError

    from tiebreak.services.api.models import RunCreate

    with pytest.raises(ValidationError, match="judge_budget"):
        RunCreate(name="x", pairs=[{"id": "a", "prompt": "p", "base": "b", "tuned": "t"}], judge_budget="some")


def test_experiments_pass_judge_budget_to_their_runs_and_refuse_a_bad_one():
    from tiebreak.services.experiments.errors import ExperimentError
    from tiebreak.services.experiments.validate import experiment_record

    body = {"name": "e", "prompts": [{"id": "a", "text": "hi"}], "base": {"outputs": {"a": "x"}},
            "judges": [JUDGE]}
    assert experiment_record({**body, "judge_budget": "auto"})["judge_budget"] == "auto"
    assert experiment_record(body)["judge_budget"] == "all"
    with pytest.raises(ExperimentError) as e:
        experiment_record({**body, "judge_budget": "half"})
    assert e.value.field == "judge_budget"


def test_a_decided_run_stops_its_judges_whatever_the_budget(store):
    """Labels that decide the run before the pipeline starts: the judge stops after one batch (state
    stopped-decided) and the run still leaves 'judging' with every pair's votes stored."""
    svc = RunService(store)
    pairs = _pairs(3)
    rid = svc.create_run({"name": "decided", "pairs": pairs, "judges": [JUDGE], "seed": 6, "alpha": 0.05})
    while (v := svc.next_pair(rid, "ann")) is not None:       # the tuned answer always wins: decided soon
        svc.submit_label(rid, {"pair_id": v["pair_id"], "annotator": "ann", "lease_id": v["lease_id"],
                               "verdict": "left" if v["left"] == pairs[int(v["pair_id"][1:])]["tuned"] else "right"})
    st = svc.status(rid)
    assert st["decision"] == "better" and st["finished"] and st["status"] == "judging"
    assert "eta_s" not in st["judges_value"][JUDGE]            # nothing voted yet: no pace to go by
    Pipeline(svc, mode="local", batch_size=4).run(rid)
    st = svc.status(rid)
    v = st["judges_value"][JUDGE]
    assert v["state"] == "stopped-decided" and v["pairs_voted"] == 4, v
    assert st["status"] == "ready" and st["judged"] == N_PAIRS


def test_a_running_judge_has_an_eta_at_its_pace_so_far():
    from tiebreak.services.runs.judge_budget import judges_value_of

    meta = {"judge_names": [JUDGE], "judges": [JUDGE],
            "judge_work": {JUDGE: {"pairs": 40, "cpu_s": 8.0, "wall_s": 10.0, "state": "running"}}}
    v = judges_value_of(meta, None, 40, 400)[JUDGE]
    assert v["eta_s"] == pytest.approx(10.0 / 40 * 360) and v["cpu_s"] == 8.0 and v["pairs_voted"] == 40


def test_the_stop_rule_looks_only_at_draws_every_running_question_has_processed(store):
    """One draw sequence with a criterion: labels without the criterion's verdict make it lag; the horizon of
    the stop rule (and of "labelled first") is the lagging question's, not the overall one's."""
    from tiebreak.services.runs.judge_budget import horizon

    svc = RunService(store)
    pairs = _pairs(4)
    rid = svc.create_run({"name": "lag", "pairs": pairs, "judges": [JUDGE], "seed": 7, "alpha": 0.001,
                          "criteria": ["tone"]})
    for k in range(8):
        v = svc.next_pair(rid, "ann")
        crit = {"tone": "left"} if k < 5 else {}
        svc.submit_label(rid, {"pair_id": v["pair_id"], "annotator": "ann", "verdict": "left",
                               "lease_id": v["lease_id"], "criteria": crit})
    rt = svc.runtime(rid)
    with rt.lock:
        assert rt.comps["overall"].processed == 8 and horizon(rt) == 5
    assert len(svc.labelled_pairs(rid)) == 5


# ------------------------------------------------------------------------------ pay as you go (auto budget)
def _label_slowly(store: RedisStore, longer_wins: bool, labels: int, seed: int) -> tuple[RunService, str, list]:
    """The pipeline judges in the background while one annotator labels; before each label the test waits until
    the judge has done what it may (it waits for labels, was stopped, or voted every pair), so the labels come
    slowly against a judge that is as fast as it gets. Returns (service, run, [(labels processed, pairs voted,
    state, pairs_allowed)] seen after each label)."""
    import time

    svc = RunService(store)
    pairs = _pairs(seed)
    rid = svc.create_run({"name": "lead", "pairs": pairs, "judges": [JUDGE], "seed": seed, "alpha": 0.001,
                          "judge_budget": "auto"})
    pipe = Pipeline(svc, mode="local", batch_size=4)
    pipe.wait_s = 0.01
    pipe.submit(rid)
    seen = []
    rng = np.random.default_rng(seed)

    def settled() -> dict:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            v = svc.status(rid)["judges_value"][JUDGE]
            if v["state"] != "running":
                return v
            time.sleep(0.01)
        raise AssertionError(f"the judge neither waited nor stopped nor finished: {v}")

    try:
        for _ in range(labels):
            v = settled()
            seen.append((len(set(svc.labelled_pairs(rid))), v["pairs_voted"], v["state"], v.get("pairs_allowed")))
            if v["state"] in ("finished", "stopped-worthless"):
                break
            _label(svc, rid, pairs, 1, longer_wins, seed=int(rng.integers(1 << 30)))
        pipe.wait(rid, timeout=30)
    finally:
        if rid in pipe.running:        # a failed assertion above: let the held-back judge end (run decided)
            svc.release(rid)
    return svc, rid, seen


def test_a_judge_without_signal_votes_only_its_lead_ahead_of_slow_labels(store):
    """auto budget, coin-flip labels one at a time: the juror may vote the labelled pairs and at most
    LEAD_START + LEAD_PER_LABEL x labels more; it waits for labels in between (before pay as you go it voted the
    whole pool at once) and it is stopped as worthless."""
    from tiebreak.services.runs.judge_budget import LEAD_PER_LABEL, LEAD_START

    svc, rid, seen = _label_slowly(store, longer_wins=False, labels=300, seed=11)
    for labelled, voted, state, allowed in seen:
        if state == "waiting-for-labels":
            assert allowed == labelled + LEAD_START + int(LEAD_PER_LABEL * labelled)
            assert voted == allowed, seen                  # it used its lead, and no more
        else:
            assert state == "stopped-worthless", seen
            assert voted <= labelled + LEAD_START + int(LEAD_PER_LABEL * labelled), seen
    assert seen[0][:3] == (0, LEAD_START, "waiting-for-labels")
    assert [s[2] for s in seen].count("waiting-for-labels") == len(seen) - 1
    st = svc.status(rid)
    v = st["judges_value"][JUDGE]
    # its trial stops it at a checkpoint (here the second: the length votes' correlation with these coin flips
    # is 0.25 on the first 20 labelled pairs, 0.14 on the first 40), having voted the labelled pairs and its lead
    assert v["state"] == "stopped-worthless" and v["stopped_by"] == "trial", v
    assert v["labels"] in checkpoints(N_PAIRS, N_PAIRS), v
    assert v["pairs_voted"] <= v["labels"] + LEAD_START + int(LEAD_PER_LABEL * v["stopped_at_labels"]), v
    assert st["status"] == "ready" and st["judged"] == N_PAIRS      # the pipeline ended: every pair's votes stored


def test_a_judge_with_signal_is_held_back_until_it_shows_value_then_votes_every_pair(store):
    """auto budget, labels that the longer answer wins: held back to its lead until a trial checkpoint with at
    least MIN_PAIRS labelled pairs shows value (its 98 % interval's lower end > RELEASE), then it votes all 400."""
    from tiebreak.services.runs.judge_budget import LEAD_PER_LABEL, LEAD_START

    svc, rid, seen = _label_slowly(store, longer_wins=True, labels=120, seed=12)
    held = [s for s in seen if s[2] == "waiting-for-labels"]
    assert len(held) >= MIN_PAIRS and seen[-1][2] == "finished", seen
    for labelled, voted, _, allowed in held:
        assert voted == allowed == labelled + LEAD_START + int(LEAD_PER_LABEL * labelled), seen
    assert len(seen) <= 2 * MIN_PAIRS, seen            # released soon after MIN_PAIRS labels
    v = svc.status(rid)["judges_value"][JUDGE]
    assert v["state"] == "finished" and v["pairs_voted"] == N_PAIRS and "pairs_allowed" not in v
    assert v["interval"][0] > THRESHOLD
