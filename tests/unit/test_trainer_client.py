"""tiebreak.services.trainer without a training loop and in this process: polling interval, failure tolerance, model
specs, logged scalars. What needs a subprocess (light import, blocked server packages, two ranks):
tests/integration/test_trainer_processes.py."""

from __future__ import annotations

import json

import httpx
import pytest

from tiebreak.services.trainer import TiebreakClient, default_model_spec


def _server(signals: list[dict], calls: list[str]) -> httpx.MockTransport:
    def handler(req: httpx.Request) -> httpx.Response:
        calls.append(f"{req.method} {req.url.path} {req.headers.get('authorization')}")
        if req.url.path.endswith("/signal"):
            s = signals[min(len(calls) - 1, len(signals) - 1)]
            return httpx.Response(500, text="boom") if s is None else httpx.Response(200, json=s)
        if req.url.path.endswith("/checkpoints"):
            body = json.loads(req.content)
            return httpx.Response(201, json={"runs": ["r1"], "checkpoint": body["checkpoint"]})
        return httpx.Response(404)
    return httpx.MockTransport(handler)


def test_poll_interval_and_errors_keep_last_signal():
    calls: list[str] = []
    c = TiebreakClient("http://tb", "exp_1", token="T", min_interval=3600,
                       transport=_server([{"stop": False}, None, {"stop": True}], calls))
    assert c.should_stop() is False
    assert c.should_stop() is False and len(calls) == 1        # within min_interval: cached
    assert c.should_stop(force=True) is False                  # server error: last signal kept, logged
    assert c.errors and "500" in c.errors[0]
    assert c.should_stop(force=True) is True
    assert calls[0] == "GET /v1/experiments/exp_1/signal Bearer T"


def test_submit_async_and_flush():
    calls: list[str] = []
    c = TiebreakClient("http://tb", "exp_1", token="T", transport=_server([{"stop": False}], calls))
    c.submit_async("checkpoint-5", lambda: {"outputs": {"a": "x"}})
    assert c.flush(timeout=10)
    assert c.submitted == [{"checkpoint": "checkpoint-5", "runs": ["r1"]}]
    with pytest.raises(ValueError):
        c.submit_checkpoint("c", model={"backend": "gguf", "path": "x"}, outputs={"a": "b"})


def test_default_model_spec(tmp_path):
    (tmp_path / "m.gguf").write_bytes(b"x")
    assert default_model_spec(tmp_path / "m.gguf") == {"backend": "gguf", "path": str(tmp_path / "m.gguf")}
    lora = tmp_path / "checkpoint-5"
    lora.mkdir()
    (lora / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "Qwen/Qwen2.5-0.5B"}))
    assert default_model_spec(lora) == {"backend": "vllm", "model": "Qwen/Qwen2.5-0.5B", "lora": str(lora)}
    full = tmp_path / "checkpoint-6"
    full.mkdir()
    assert default_model_spec(full) == {"backend": "vllm", "model": str(full)}


# ------------------------------------------------------------------------------ logged scalars (news)
def _row(name: str, decision: str, labels: int, lo: float, hi: float, run_id: str = "r", best: dict | None = None):
    base = {"run_id": run_id, "decision": decision, "estimate": (lo + hi) / 2, "lower": lo, "upper": hi,
            "labels": labels, "alpha": 0.03, "against": "base"}
    return {"checkpoint": name, "index": 1, "alpha": 0.03, "decision": (best or base)["decision"],
            "labels": labels + (best["labels"] if best else 0), "vs_base": base, "vs_best": best or base}


def test_checkpoint_metrics_keys_and_codes():
    from tiebreak.services.trainer import DECISION_CODES, METRIC_KEYS, REASON_CODES, checkpoint_metrics

    best = {"run_id": "r2", "decision": "worse", "estimate": 0.2, "lower": 0.1, "upper": 0.4, "labels": 7,
            "alpha": 0.015, "against": "checkpoint-5"}
    m = checkpoint_metrics(_row("checkpoint-10", "better", 5, 0.55, 0.9, best=best),
                           {"stop": True, "reason": "regression", "labels": 40})
    assert set(m) == set(METRIC_KEYS) and all(isinstance(v, float) for v in m.values())
    assert m["tiebreak/theta_vs_base"] == pytest.approx(0.725) and (m["tiebreak/lower"], m["tiebreak/upper"]) == (0.55, 0.9)
    assert m["tiebreak/theta_vs_best"] == 0.2 and m["tiebreak/upper_vs_best"] == 0.4
    assert m["tiebreak/decision"] == DECISION_CODES["worse"] == -1 and m["tiebreak/decision_vs_base"] == 1
    assert m["tiebreak/labels"] == 12 and m["tiebreak/labels_total"] == 40 and m["tiebreak/checkpoint_step"] == 10
    assert m["tiebreak/stop"] == 1 and m["tiebreak/stop_reason"] == REASON_CODES["regression"] == 2
    assert len(set(DECISION_CODES.values())) == len(DECISION_CODES)   # every decision has its own code


def test_signal_news_reports_each_change_once():
    from tiebreak.services.trainer import SignalNews

    n = SignalNews()
    sig = {"stop": False, "reason": None, "labels": 0,
           "checkpoints": [_row("c-5", "running", 0, 0.0, 1.0), _row("c-10", "generating", 0, 0, 1, run_id="")]}
    assert n.news(sig) == []                                     # no labels, nothing decided: no news
    sig = {**sig, "labels": 3, "checkpoints": [_row("c-5", "running", 3, 0.1, 0.9)]}
    got = n.news(sig)
    assert [c for c, _ in got] == ["c-5"] and got[0][1]["tiebreak/labels"] == 3
    assert n.news(sig) == [] and n.news(dict(sig)) == []          # same content again: no news
    sig = {"stop": True, "reason": "plateau", "labels": 9,
           "checkpoints": [_row("c-5", "worse", 6, 0.05, 0.45), _row("c-10", "worse", 3, 0.0, 0.3)]}
    got = n.news(sig)
    assert [c for c, _ in got] == ["c-5", "c-10"] and all(m["tiebreak/stop"] == 1 for _, m in got)
    assert n.news({**sig, "stop": False, "reason": None}) == [(None, {"tiebreak/stop": 0.0, "tiebreak/stop_reason": 0.0,
                                                                      "tiebreak/labels_total": 9.0})]


def test_hf_callback_logs_news_through_trainer_log_or_log_history():
    from types import SimpleNamespace

    from tiebreak.services.trainer import _HFCallback

    sig = {"stop": True, "reason": "regression", "labels": 6, "best_checkpoint": None,
           "checkpoints": [_row("checkpoint-5", "worse", 6, 0.0, 0.3)]}
    calls: list[str] = []

    def callback(trainer=None):
        c = TiebreakClient("http://tb", "exp_1", min_interval=0, transport=_server([sig], calls))
        cb = _HFCallback(c)
        if trainer is not None:
            cb.attach(trainer)
        return cb

    state = SimpleNamespace(global_step=7, is_world_process_zero=True, log_history=[])
    cb = callback()
    control = cb.on_step_end(None, state, SimpleNamespace(should_training_stop=False))
    assert control.should_training_stop and cb.stopped_at == 7
    assert len(state.log_history) == 1 and state.log_history[0]["step"] == 7
    assert state.log_history[0]["tiebreak/decision"] == -1 and state.log_history[0]["tiebreak/stop"] == 1
    logged: list[dict] = []
    state = SimpleNamespace(global_step=7, is_world_process_zero=True, log_history=[])
    cb = callback(SimpleNamespace(log=logged.append))
    cb.on_step_end(None, state, SimpleNamespace(should_training_stop=False))
    cb.on_step_end(None, state, SimpleNamespace(should_training_stop=False))   # the same signal: no news
    assert state.log_history == [] and len(logged) == 1 and logged[0]["tiebreak/upper"] == 0.3
    assert cb.logged == [{"step": 7, "checkpoint": "checkpoint-5", **logged[0]}]
