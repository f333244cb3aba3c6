"""The pipeline of a streaming generate run judges each pair as soon as both its outputs exist (services/judging.py),
with the real RunService on a real embedded Redis and the pipeline's own threads; the model workers are played by
the test (workers whose timing and failures the test controls), so the orchestration around them is checked
deterministically. The same with real GGUF models through HTTP: tests/integration/test_generate_streaming_http.py."""

from __future__ import annotations

import threading
import time

from tiebreak.judges.actors import GenerationWorker
from tiebreak.services.pipeline import Pipeline, _LocalHandle
from tiebreak.services.runs import RunService

N = 12


class _Generator:
    """Outputs "{side} answer {pid}"; calls after the first ``free`` wait for ``gate`` (the test opens it)."""

    def __init__(self, side: str, calls: list, free: int, gate: threading.Event):
        self.side, self.calls, self.free, self.gate = side, calls, free, gate

    def generate(self, batch, max_tokens=256, temperature=0.0):
        mine = [c for c in self.calls if c[0] == self.side]
        if len(mine) >= self.free:
            assert self.gate.wait(30), "the test never opened the gate"
        self.calls.extend((self.side, pid) for pid, _ in batch)
        return {pid: f"{self.side} answer {pid}" for pid, _ in batch}


class _Judge:
    """Votes 0.7 on every pair; raises on call number ``fail_at`` (1-based) and then sets ``failed``."""

    def __init__(self, batches: list, fail_at: int | None = None, failed: threading.Event | None = None):
        self.batches, self.fail_at, self.failed = batches, fail_at, failed

    def vote_costed(self, batch, clock="thread"):
        self.batches.append([int(r[0]) for r in batch])
        if self.fail_at is not None and len(self.batches) == self.fail_at:
            if self.failed is not None:
                self.failed.set()
            raise RuntimeError("the judge's worker died")
        for _, _, base, tuned in batch:
            assert base.startswith("base answer") and tuned.startswith("tuned answer")   # outputs exist
        return {int(r[0]): {"overall": 0.7} for r in batch}, 0.01


def _pipeline(svc: RunService, free: int = N, fail_at: int | None = None):
    """A local pipeline whose actors are the test's workers; returns (pipeline, gen calls, judge batches, gate,
    judge-failed event)."""
    pipe = Pipeline(svc, mode="local", batch_size=2)
    svc.pipeline = pipe
    calls: list = []
    batches: list = []
    gate, failed = threading.Event(), threading.Event()

    def actor(key, cls, *args, num_cpus=None):
        if cls is GenerationWorker:
            side = key.rsplit(":", 1)[1]
            # after a judge failed the generator goes on at once (the pipeline must stop it, not the test)
            worker = _Generator(side, calls, free, gate if fail_at is None else failed)
        else:
            worker = _Judge(batches, fail_at, failed)
        h = _LocalHandle(worker)
        pipe.actors[key] = h
        return h

    pipe._actor = actor
    return pipe, calls, batches, gate, failed


def _restart_to_the_end(store, rid: str) -> tuple[RunService, dict, list, list]:
    """A new service and pipeline on the same store resume the run (the gate open) and finish it: every output
    made and every pair voted (or stored without the votes of a stopped judge). Returns (service, status, gen
    calls, judge batches)."""
    svc = RunService(store)
    pipe, calls, batches, gate, _ = _pipeline(svc)
    gate.set()
    pipe.resume_all()
    pipe.wait(rid, 30)
    st = svc.status(rid)
    assert st["status"] == "ready" and st["generated"] == N and st["judged"] == N, st
    return svc, st, calls, batches


def _create(svc: RunService, seed: int = 3, **extra) -> str:
    prompts = [{"id": f"p{i}", "text": f"question {i}"} for i in range(N)]
    return svc.create_run({"name": "g", "generate": {"base": "b.gguf", "tuned": "t.gguf", "prompts": prompts},
                           "judges": ["judge-a"], "seed": seed, **extra})


def _until(pred, timeout: float = 20.0) -> None:
    t0 = time.monotonic()
    while not pred():
        assert time.monotonic() - t0 < timeout, "timed out"
        time.sleep(0.02)


def test_pairs_are_judged_while_other_outputs_are_missing(store):
    """Generation is held after 4 pairs: their votes are stored and reach the sampler while the other 8 pairs
    have no outputs (status still "generating"); once generation goes on every pair is voted and the run is
    ready. Before issue 10's judging change, judging started only after the last output (no vote here)."""
    svc = RunService(store)
    pipe, calls, batches, gate, _ = _pipeline(svc, free=4)
    rid = _create(svc)
    _until(lambda: svc.status(rid)["judged"] >= 4)
    st = svc.status(rid)
    assert st["status"] == "generating" and st["generated"] == 4 and st["judged"] == 4, st
    voted = {i for b in batches for i in b}
    assert len(voted) == 4 and svc.runtime(rid).ungenerated.isdisjoint(voted)
    assert svc.runtime(rid).comps["overall"].n_voted == 4          # the sampler has them
    gate.set()
    pipe.wait(rid, 30)
    st = svc.status(rid)
    assert st["status"] == "ready" and st["generated"] == N and st["judged"] == N, st
    assert sorted(i for b in batches for i in b) == list(range(N))   # every pair once
    assert st["judges_value"]["judge-a"]["state"] == "finished"
    assert pipe.actors == {} and not pipe.running


def test_a_judge_that_dies_mid_stream_fails_the_run_and_stops_generation(store):
    """The judge's worker raises on its second batch while most outputs are still to be made: the run is
    failed with the judge's error (not "generation incomplete"), generation stops at once, every thread and
    actor of the run is gone, and the votes stored before the failure are kept."""
    svc = RunService(store)
    pipe, calls, batches, _, failed = _pipeline(svc, free=3, fail_at=2)   # 3 pairs: a second batch exists
    rid = _create(svc, seed=4)
    pipe.wait(rid, 30)
    st = svc.status(rid)
    assert st["status"] == "failed" and "judge's worker died" in st["error"], st
    assert failed.is_set()
    per_side = max(sum(1 for c in calls if c[0] == side) for side in ("base", "tuned"))
    assert per_side <= 5 < N, calls                   # stopped within a call or two of the failure
    assert st["judged"] == len(batches[0]) >= 1       # the first batch's votes are kept
    assert pipe.actors == {} and not pipe.running
    assert not [t for t in threading.enumerate() if rid in t.name]


def test_a_restart_mid_stream_resumes_generation_and_judging_from_what_is_stored(store):
    """The pipeline that died had made 5 pairs (and one side of a 6th) and voted 3 of them: a new process
    makes only the missing outputs and votes only the unvoted pairs, each once."""
    svc = RunService(store)          # no pipeline: the test plays the one that died
    rid = _create(svc, seed=5)
    made = [f"p{i}" for i in range(5)]
    svc.store.set_outputs(rid, {f"{side}:{p}": f"{side} answer {p}" for p in made for side in ("base", "tuned")}
                          | {"base:p5": "base answer p5"})
    svc.outputs_ready(rid, {p: (f"base answer {p}", f"tuned answer {p}") for p in made}, made=11)
    svc.add_votes(rid, {i: {"overall": [0.6]} for i in (0, 2, 4)})
    assert svc.status(rid)["status"] == "generating" and svc.status(rid)["judged"] == 3
    svc.close()
    svc2, st, calls, batches = _restart_to_the_end(store, rid)
    assert sorted(calls) == sorted([("base", f"p{i}") for i in range(6, N)]
                                   + [("tuned", f"p{i}") for i in range(5, N)])
    assert sorted(i for b in batches for i in b) == [1, 3, *range(5, N)]


def test_a_run_decided_while_generating_stops_generation_and_judging(store):
    """Budget 1: the first label ends the run; generation stops, the judge stops ("stopped-decided"), and the
    run is ready with most prompts never made."""
    svc = RunService(store)
    rid = _create(svc, seed=6, budget=1)
    assert svc.next_pair(rid, "ann") == {"retry_after": 2.0}     # drawn before the pipeline starts: made first
    pipe, calls, batches, gate, _ = _pipeline(svc, free=1)
    pipe.submit(rid)
    _until(lambda: _leased(svc, rid))
    assert svc.run_finished(rid)
    gate.set()
    pipe.wait(rid, 30)
    st = svc.status(rid)
    assert st["status"] == "ready" and st["decision"] == "undecided" and st["generated"] <= 2, st
    assert st["judges_value"]["judge-a"]["state"] == "stopped-decided", st["judges_value"]
    assert len(calls) <= 4 and len(batches) <= 2
    assert pipe.actors == {} and not pipe.running


def _leased(svc: RunService, rid: str) -> bool:
    """Ask for a pair; label it "tie" once it is served (its outputs exist)."""
    v = svc.next_pair(rid, "ann")
    if v is None or "lease_id" not in v:
        return False
    svc.submit_label(rid, {"pair_id": v["pair_id"], "annotator": "ann", "verdict": "tie",
                           "lease_id": v["lease_id"]})
    return True


def test_a_judge_stopped_before_a_restart_stays_stopped_and_later_pairs_are_stored_without_its_vote(store):
    """The auto budget had stopped the run's only judge before the server restarted mid-generation: the new
    pipeline does not start it again, and the pairs made from then on are stored without its vote as they come,
    so the run still ends ready (not "judging incomplete")."""
    svc = RunService(store)          # no pipeline: the test plays the one that died
    rid = _create(svc, seed=7, judge_budget="auto")
    rt = svc.runtime(rid)
    with rt.lock:
        rt.meta["judge_work"] = {"judge-a": {"pairs": 0, "cpu_s": 0.0, "state": "stopped-worthless"}}
        svc.writer.commit(rt, meta=rt.meta)
    svc.close()
    svc2, st, calls, batches = _restart_to_the_end(store, rid)
    assert batches == [] and st["judges_value"]["judge-a"]["state"] == "stopped-worthless"
    assert all(v["overall"] == [None] for v in svc2.store.all_votes(rid).values())
