"""Experiments (issue 5): the signal rule, alpha-spending across checkpoints, ExperimentService over in-process runs."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

import tiebreak.services.experiments as E
from tiebreak.services.experiments import (
    CheckpointVerdict,
    ComparisonView,
    ExperimentError,
    ExperimentService,
    LocalRuns,
    NotFound,
    SignalRule,
)


def cv(decision: str, lower: float = 0.3, upper: float = 0.7, labels: int = 10, against: str = "base") -> ComparisonView:
    return ComparisonView("r", decision, (lower + upper) / 2, lower, upper, labels, 0.01, against)


def ck(i: int, vs_base: str, vs_best: str | None = None, lower: float = 0.3, against: str = "c1") -> CheckpointVerdict:
    return CheckpointVerdict(f"c{i}", i, 0.01, cv(vs_base, lower=lower),
                             None if vs_best is None else cv(vs_best, against=against))


# --------------------------------------------------------------------------------------------- signal rule
def test_protected_slice_worse_than_base_disqualifies_and_stops():
    def with_slice(i: int, overall: str, edge: str) -> CheckpointVerdict:
        base = ComparisonView("r", overall, 0.6, 0.52, 0.7, 40, 0.01, "base",
                              {"edge": {"decision": edge, "estimate": 0.4, "interval": [0.2, 0.6], "labels": 9}})
        return CheckpointVerdict(f"c{i}", i, 0.01, base)

    rule = SignalRule(patience=3, protect_slices=["edge"])
    s = rule.evaluate([with_slice(1, "better", "better"), with_slice(2, "better", "running")])
    assert (s.stop, s.best_checkpoint) == (False, "c2")
    s = rule.evaluate([with_slice(1, "better", "better"), with_slice(2, "better", "worse")])
    assert (s.stop, s.reason, s.best_checkpoint) == (True, "slice-regression", "c1")
    # a later checkpoint that is no longer worse on the slice lifts it; unprotected rules ignore slices
    s = rule.evaluate([with_slice(1, "better", "worse"), with_slice(2, "better", "equivalent")])
    assert (s.stop, s.best_checkpoint) == (False, "c2")
    s = SignalRule(patience=3).evaluate([with_slice(1, "better", "worse")])
    assert (s.stop, s.best_checkpoint) == (False, "c1")


def test_signal_empty_and_running():
    s = SignalRule().evaluate([])
    assert (s.stop, s.reason, s.best_checkpoint) == (False, None, None)
    s = SignalRule(patience=1).evaluate([ck(1, "running")])
    assert not s.stop and s.checkpoints[0]["decision"] == "running"


def test_best_is_latest_checkpoint_that_beat_the_best_so_far():
    s = SignalRule(patience=2).evaluate([ck(1, "better"), ck(2, "better", "equivalent"), ck(3, "better", "better")])
    assert s.best_checkpoint == "c3" and not s.stop


def test_plateau_after_best_needs_patience_finished_checkpoints():
    rule = SignalRule(patience=2)
    cks = [ck(1, "better"), ck(2, "better", "equivalent")]
    assert not rule.evaluate(cks).stop
    cks.append(ck(3, "better", "running"))   # running checkpoints neither count nor break the streak
    assert not rule.evaluate(cks).stop
    cks.append(ck(4, "equivalent", "undecided"))
    s = rule.evaluate(cks)
    assert s.stop and s.reason == "plateau" and s.best_checkpoint == "c1"
    assert "c2: equivalent" in s.message and "c4: undecided" in s.message


def test_undecided_not_plateau_when_configured():
    cks = [ck(1, "better"), ck(2, "better", "undecided"), ck(3, "better", "undecided")]
    assert SignalRule(patience=2).evaluate(cks).stop
    assert not SignalRule(patience=2, undecided_is_plateau=False).evaluate(cks).stop


def test_regression_when_all_last_are_worse_and_none_beat_base():
    s = SignalRule(patience=2).evaluate([ck(1, "worse"), ck(2, "worse")])
    assert s.stop and s.reason == "regression" and s.best_checkpoint is None
    s = SignalRule(patience=2).evaluate([ck(1, "worse"), ck(2, "equivalent")])
    assert s.stop and s.reason == "plateau"
    s = SignalRule(patience=3).evaluate([ck(1, "worse"), ck(2, "worse")])
    assert not s.stop


def test_new_best_resets_patience():
    rule = SignalRule(patience=2)
    cks = [ck(1, "better"), ck(2, "better", "worse"), ck(3, "better", "better"), ck(4, "better", "worse")]
    s = rule.evaluate(cks)
    assert not s.stop and s.best_checkpoint == "c3"


def test_target_uses_lower_bound_vs_base_and_has_priority():
    cks = [ck(1, "running", lower=0.58)]
    assert not SignalRule(target_margin=0.1).evaluate(cks).stop
    s = SignalRule(target_margin=0.05).evaluate(cks)
    assert s.stop and s.reason == "target" and "c1" in s.message
    s = SignalRule(patience=1, target_margin=0.0).evaluate([ck(1, "worse"), ck(2, "better", lower=0.51)])
    assert s.reason == "target"
    assert not SignalRule().evaluate(cks).stop   # no target set: never fires


def test_budget():
    cks = [ck(1, "running"), ck(2, "running")]
    assert not SignalRule(budget=21).evaluate(cks).stop
    s = SignalRule(budget=20).evaluate(cks)
    assert s.stop and s.reason == "budget" and s.labels == 20


@pytest.mark.parametrize("kw,field", [({"patience": 0}, "patience"), ({"target_margin": 0.5}, "target_margin"),
                                      ({"budget": 0}, "budget")])
def test_rule_validation_names_field(kw, field):
    with pytest.raises(ExperimentError) as e:
        SignalRule(**kw)
    assert e.value.field == field


# ------------------------------------------------------------------------------------------- the service
N = 12


def make(alpha=0.05, **kw):
    runs = LocalRuns(seed=0)
    sent = []
    svc = ExperimentService(runs, notifier=lambda url, p: sent.append(p))
    body = {"name": "t", "prompts": [{"id": str(i), "text": f"q{i}"} for i in range(N)],
            "base": {"outputs": {str(i): f"base {i}" for i in range(N)}}, "alpha": alpha,
            "webhook": "http://example.invalid/hook", **kw}
    return runs, svc, svc.create_experiment(body), sent


def outputs(tag):
    return {str(i): f"{tag} {i}" for i in range(N)}


def prefer(runs: LocalRuns, rid: str, winner) -> int:
    """Label run rid: y = 1 if the tuned side's text starts with one of `winner`'s tags, 0 for the base side."""
    def ann(p):
        t, b = p["tuned"].split()[0], p["base"].split()[0]
        return 1.0 if winner(t, b) else 0.0
    return runs.annotate(ann, [rid])


def test_alpha_spending_and_comparisons_per_checkpoint():
    runs, svc, exp, sent = make(alpha=0.1, patience=5)
    r1 = svc.add_checkpoint(exp, {"checkpoint": "c1", "outputs": outputs("c1")})
    assert r1["vs_best"] is None and len(r1["runs"]) == 1
    a1 = 0.1 * 6 / math.pi**2
    assert r1["alpha"] == pytest.approx(a1)
    assert runs.run_status(r1["vs_base"])["alpha"] == pytest.approx(a1)   # one comparison: all of alpha_1
    prefer(runs, r1["vs_base"], lambda t, b: t == "c1")
    sig = svc.signal(exp)
    assert sig["best_checkpoint"] == "c1" and sig["checkpoints"][0]["vs_base"]["decision"] == "better"
    r2 = svc.add_checkpoint(exp, {"checkpoint": "c2", "outputs": outputs("c2")})
    assert len(r2["runs"]) == 2
    a2 = 0.1 * 6 / (math.pi**2 * 4)
    for rid in r2["runs"]:
        assert runs.run_status(rid)["alpha"] == pytest.approx(a2 / 2)   # two comparisons share alpha_2
    # the vs-best run pairs c1's outputs (as "base") with c2's
    pair = runs.pair(r2["vs_best"], 0)
    assert pair["base"].startswith("c1") and pair["tuned"].startswith("c2")
    assert svc.get(exp)["checkpoints"][1]["runs"]["vs_best"]["against"] == "c1"
    # the webhook fired when the best checkpoint changed
    assert any(p["best_checkpoint"] == "c1" for p in sent)


def test_stops_on_regression_end_to_end_with_engine():
    runs, svc, exp, sent = make(patience=2)
    for k in (1, 2):
        r = svc.add_checkpoint(exp, {"checkpoint": f"c{k}", "outputs": outputs(f"c{k}")})
        prefer(runs, r["vs_base"], lambda t, b: False)            # humans always prefer the base
        assert runs.run_status(r["vs_base"])["decision"] == "worse"
        sig = svc.signal(exp)
    assert sig["stop"] and sig["reason"] == "regression" and sig["best_checkpoint"] is None
    assert [c["decision"] for c in sig["checkpoints"]] == ["worse", "worse"]
    assert sent[-1]["stop"] is True and sent[-1]["reason"] == "regression"
    n = len(sent)
    svc.signal(exp)
    assert len(sent) == n            # unchanged signal: no second webhook


def test_plateau_after_improvement_and_target():
    for target, fires in ((0.0, True), (0.3, False)):
        runs, svc, exp, _ = make(patience=2, target_margin=target)
        r = svc.add_checkpoint(exp, {"checkpoint": "c1", "outputs": outputs("c1")})
        prefer(runs, r["vs_base"], lambda t, b: True)
        sig = svc.signal(exp)
        # the run stops at "better" (lower bound just above 1/2): a 0.3 target is not shown by then
        assert sig["best_checkpoint"] == "c1" and sig["stop"] is fires
        assert sig["reason"] == ("target" if fires else None)
    runs, svc, exp, _ = make(patience=1)
    r = svc.add_checkpoint(exp, {"checkpoint": "c1", "outputs": outputs("c1")})
    prefer(runs, r["vs_base"], lambda t, b: True)
    r = svc.add_checkpoint(exp, {"checkpoint": "c2", "outputs": outputs("c2")})
    prefer(runs, r["vs_base"], lambda t, b: True)
    prefer(runs, r["vs_best"], lambda t, b: False)               # c2 beats base, loses to c1
    sig = svc.signal(exp)
    assert sig["stop"] and sig["reason"] == "regression" and sig["best_checkpoint"] == "c1"
    assert sig["checkpoints"][1]["vs_base"]["decision"] == "better"
    assert sig["checkpoints"][1]["vs_best"]["against"] == "c1"


def test_state_persists_in_kv_and_reloads():
    runs, svc, exp, _ = make()
    svc.add_checkpoint(exp, {"checkpoint": "c1", "outputs": outputs("c1")})
    svc2 = ExperimentService(runs, kv=svc.kv, notifier=lambda u, p: None)
    assert [c["checkpoint"] for c in svc2.get(exp)["checkpoints"]] == ["c1"]
    assert svc2.list() == [exp]


def test_model_spec_checkpoint_is_generated_once_and_reused():
    calls = []

    def gen(spec, prompts):
        calls.append(spec["path"])
        return {p["id"]: f"{spec['path']} {p['id']}" for p in prompts}

    runs = LocalRuns(seed=1)
    svc = ExperimentService(runs, generator=gen, notifier=lambda u, p: None)
    exp = svc.create_experiment({"name": "g", "prompts": [{"id": "a", "text": "x"}, {"id": "b", "text": "y"}],
                                 "base": {"backend": "gguf", "path": "base.gguf"}, "patience": 3})
    r = svc.add_checkpoint(exp, {"checkpoint": "c1", "model": {"backend": "gguf", "path": "c1.gguf"}})
    runs.annotate(lambda p: 1.0, r["runs"])
    svc.add_checkpoint(exp, {"checkpoint": "c2", "model": {"backend": "gguf", "path": "c2.gguf"}})
    svc.add_checkpoint(exp, {"checkpoint": "c3", "model": {"backend": "gguf", "path": "c3.gguf"}})
    assert sorted(calls) == ["base.gguf", "c1.gguf", "c2.gguf", "c3.gguf"]   # each generated once
    assert svc.signal(exp)["best_checkpoint"] == "c1"   # c2, c3 were compared with c1 from its stored outputs


def test_model_checkpoint_generates_in_background():
    import threading
    release = threading.Event()

    def gen(spec, prompts):
        if spec["path"] == "bad.gguf":
            raise RuntimeError("no such file")
        assert release.wait(10)
        return {p["id"]: f"{spec['path']} {p['id']}" for p in prompts}

    runs = LocalRuns(seed=2)
    svc = ExperimentService(runs, generator=gen, notifier=lambda u, p: None, async_generation=True)
    exp = svc.create_experiment({"name": "g", "prompts": [{"id": "a", "text": "x"}],
                                 "base": {"outputs": {"a": "base"}}})
    r = svc.add_checkpoint(exp, {"checkpoint": "c1", "model": {"backend": "gguf", "path": "c1.gguf"}})
    assert r["status"] == "generating" and r["runs"] == []
    sig = svc.signal(exp)
    assert sig["checkpoints"][0]["decision"] == "generating" and not sig["stop"]
    release.set()
    for _ in range(200):
        if svc.get(exp)["checkpoints"][0]["status"] == "ready":
            break
        time.sleep(0.01)
    ck = svc.get(exp)["checkpoints"][0]
    assert ck["status"] == "ready" and runs.pair(ck["runs"]["vs_base"]["run_id"], 0)["tuned"] == "c1.gguf a"
    svc.add_checkpoint(exp, {"checkpoint": "c2", "model": {"backend": "gguf", "path": "bad.gguf"}})
    for _ in range(200):
        if svc.get(exp)["checkpoints"][1]["status"] == "failed":
            break
        time.sleep(0.01)
    ck = svc.get(exp)["checkpoints"][1]
    assert ck["status"] == "failed" and "no such file" in ck["error"]
    assert svc.signal(exp)["checkpoints"][1]["decision"] == "failed"


@pytest.mark.parametrize("body,field", [
    ({"prompts": [{"id": "a", "text": "x"}], "base": {"outputs": {"a": "x"}}}, "name"),
    ({"name": "n", "prompts": [], "base": {"outputs": {}}}, "prompts"),
    ({"name": "n", "prompts": [{"id": "a", "text": "x"}, {"id": "a", "text": "y"}], "base": {"outputs": {"a": "x"}}},
     "prompts[1].id"),
    ({"name": "n", "prompts": [{"id": "a", "text": "x"}]}, "base"),
    ({"name": "n", "prompts": [{"id": "a", "text": "x"}], "base": {"backend": "hf"}}, "base.backend"),
    ({"name": "n", "prompts": [{"id": "a", "text": "x"}], "base": {"outputs": {"b": "x"}}}, "base.outputs"),
    ({"name": "n", "prompts": [{"id": "a", "text": "x"}], "base": {"outputs": {"a": "x"}}, "alpha": 1.5}, "alpha"),
    ({"name": "n", "prompts": [{"id": "a", "text": "x"}], "base": {"outputs": {"a": "x"}}, "patience": 0}, "patience"),
    ({"name": "n", "prompts": [{"id": "a", "text": "x"}], "base": {"outputs": {"a": "x"}}, "judges": "gpt"}, "judges"),
    ({"name": "n", "prompts": [{"id": "a", "text": "x"}], "base": {"outputs": {"a": "x"}}, "judges": ["gpt-9"]},
     "judges[0]"),
    ({"name": "n", "prompts": [{"id": "a", "text": "x"}], "base": {"outputs": {"a": "x"}},
      "judges": ["qwen2.5-coder-0.5b:sideways"]}, "judges[0]"),
])
def test_create_validation_names_field(body, field):
    svc = ExperimentService(LocalRuns(), notifier=lambda u, p: None)
    with pytest.raises(ExperimentError) as e:
        svc.create_experiment(body)
    assert e.value.field == field and e.value.status == 422


def test_checkpoint_validation():
    runs, svc, exp, _ = make()
    with pytest.raises(NotFound):
        svc.add_checkpoint("exp_nope", {"checkpoint": "c1", "outputs": outputs("c1")})
    with pytest.raises(ExperimentError, match="model"):
        svc.add_checkpoint(exp, {"checkpoint": "c1"})
    with pytest.raises(ExperimentError) as e:
        svc.add_checkpoint(exp, {"checkpoint": "c1", "outputs": {"0": "x"}})
    assert e.value.field == "outputs" and "missing" in e.value.message
    svc.add_checkpoint(exp, {"checkpoint": "c1", "outputs": outputs("c1")})
    with pytest.raises(ExperimentError) as e:
        svc.add_checkpoint(exp, {"checkpoint": "c1", "outputs": outputs("c1")})
    assert e.value.status == 409
    assert len(svc.get(exp)["checkpoints"]) == 1   # failed submissions left nothing behind


# ---------------------------------------------------------------------------------- FWER by simulation
def _fwer(runs_n: int, n: int, k: int, alpha: float, seed0: int) -> float:
    """Fraction of simulated experiments (k checkpoints, every comparison at theta = 1/2 exactly) with any
    better/worse verdict."""
    bad = 0
    for r in range(runs_n):
        rng = np.random.default_rng(seed0 + r)
        runs = LocalRuns(seed=seed0 + r, grid_resolution=100)
        svc = ExperimentService(runs, notifier=lambda u, p: None)
        exp = svc.create_experiment({"name": "f", "prompts": [{"id": str(i), "text": "q"} for i in range(n)],
                                     "base": {"outputs": {str(i): "b" for i in range(n)}}, "alpha": alpha,
                                     "patience": 100})
        for c in range(k):
            res = svc.add_checkpoint(exp, {"checkpoint": f"c{c}", "outputs": {str(i): f"c{c}" for i in range(n)}})
            for rid in res["runs"]:
                y = rng.permutation(np.r_[np.ones(n // 2), np.zeros(n - n // 2)])   # theta = 1/2 exactly
                runs.annotate(lambda p, y=y: float(y[int(p["id"])]), [rid])
        sig = svc.signal(exp)
        if any(c[s]["decision"] in ("better", "worse") for c in sig["checkpoints"] for s in ("vs_base", "vs_best")):
            bad += 1
    return bad / runs_n


def test_family_wise_error_with_alpha_spending_by_simulation():
    # alpha = 0.3 so that errors are frequent enough to measure with 1,000 experiments of 3 checkpoints
    # (up to 5 comparisons each); 3 binomial standard errors of slack.
    alpha, R = 0.3, 1000
    fwer = _fwer(R, 20, 3, alpha, seed0=0)
    assert fwer <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / R)
    assert fwer > 0.02   # the simulation can produce false verdicts at all (not vacuous)


def test_family_wise_error_exceeds_alpha_without_spending(monkeypatch):
    # The negative control: every comparison at the full alpha (no spending) breaks the family-wise bound,
    # so the simulation above has the power to see a wrong spending sequence.
    monkeypatch.setattr(E.service, "spend_alpha", lambda a, k: a)
    alpha, R = 0.3, 300
    assert _fwer(R, 20, 3, alpha, seed0=10_000) > alpha


def test_experiment_errors_belong_to_the_service_error_family():
    """One error family: the app's ServiceError handler answers experiment errors (no per-route handler)."""
    from tiebreak.services import errors
    from tiebreak.services.experiments import ExperimentConflict

    runs, svc, exp, _ = make()
    with pytest.raises(errors.NotFound) as nf:
        svc.signal("exp_nope")
    assert nf.value.status_code == 404 and nf.value.detail()[0]["loc"] == ["path", "experiment"]
    with pytest.raises(errors.BadInput) as bad:
        svc.add_checkpoint(exp, {"checkpoint": "c1", "outputs": {"0": "x"}})
    assert bad.value.status_code == 422 and bad.value.detail()[0]["loc"] == ["body", "outputs"]
    svc.add_checkpoint(exp, {"checkpoint": "c1", "outputs": outputs("c1")})
    with pytest.raises(errors.Conflict) as dup:
        svc.add_checkpoint(exp, {"checkpoint": "c1", "outputs": outputs("c1")})
    assert isinstance(dup.value, ExperimentConflict) and dup.value.status_code == 409


def test_default_notifier_is_the_one_webhook_sender():
    """Without the app's outbox, signals still go through services/webhooks.py: the documented payload
    {"event": "experiment.signal", "sent_at", "data": <signal>} with an Idempotency-Key, retried after a 500."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    got: list[tuple[int, dict, dict]] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's naming
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            got.append((len(got), dict(self.headers), body))
            self.send_response(500 if len(got) == 1 else 200)   # the first delivery fails: it must be retried
            self.end_headers()

        def log_message(self, *a):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        runs = LocalRuns(seed=0)
        svc = ExperimentService(runs)
        assert svc.own_sender is not None
        svc.own_sender.backoff_s = 0.01
        exp = svc.create_experiment({"name": "w", "prompts": [{"id": str(i), "text": "q"} for i in range(N)],
                                     "base": {"outputs": {str(i): "b" for i in range(N)}}, "patience": 1,
                                     "webhook": f"http://127.0.0.1:{srv.server_address[1]}/hook"})
        r = svc.add_checkpoint(exp, {"checkpoint": "c1", "outputs": outputs("c1")})
        runs.annotate(lambda p: 0.0, r["runs"])          # c1 worse than the base: the signal stops
        assert svc.signal(exp)["stop"]
        for _ in range(500):
            if len(got) >= 2:
                break
            time.sleep(0.01)
        svc.own_sender.close()
    finally:
        srv.shutdown()
    assert len(got) == 2
    (_, h1, b1), (_, h2, b2) = got
    assert b1["event"] == "experiment.signal" and b1["data"]["experiment"] == exp and b1["data"]["stop"]
    assert h1["Idempotency-Key"] == h2["Idempotency-Key"] and b1 == b2     # the retry is the same delivery
    assert h1["X-Tiebreak-Event"] == "experiment.signal"
