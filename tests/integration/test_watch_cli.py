"""`tiebreak watch` (the real CLI in a subprocess) against the real service: new checkpoint-* folders and .gguf
files are noticed, submitted in step order, incomplete ones wait, resubmission is skipped; bad input exits 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from experiment_server import ADMIN, label_runs, serve_app

from tiebreak.services.api.deps import services_of
from tiebreak.services.api.experiments import _RunServiceBackend
from tiebreak.services.experiments import ExperimentService, RedisKV

pytestmark = pytest.mark.integration

PROMPTS = [{"id": "a", "text": "x"}, {"id": "b", "text": "y"}]


def files_generator(spec: dict, prompts: list[dict]) -> dict[str, str]:
    """The service's output generator for this test: reads the checkpoint's own files (no LLM here; what is
    tested is the watcher), so the outputs really come from the submitted path."""
    path = Path(spec.get("path") or spec.get("model"))
    text = path.read_text() if path.is_file() else (path / "config.json").read_text()
    return {p["id"]: f"{text.strip()} {p['id']}" for p in prompts}


def tb(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The CLI in ``cwd`` (watch writes its report into the current folder by default)."""
    env = {**os.environ, "TIEBREAK_TOKEN": ADMIN}
    return subprocess.run([sys.executable, "-m", "tiebreak.services.cli", "watch", *args], capture_output=True, text=True,
                          env=env, timeout=120, cwd=cwd)


def test_watch_submits_new_checkpoints_in_step_order(tmp_path):
    out = tmp_path / "train"
    out.mkdir()
    for step in (10, 5):
        d = out / f"checkpoint-{step}"
        d.mkdir()
        (d / "config.json").write_text(json.dumps({"step": step}))
        (d / "trainer_state.json").write_text("{}")
    (out / "checkpoint-15").mkdir()              # still being written: no model file yet
    (out / "model-step20.gguf").write_text("gguf-20")
    (out / "notes.txt").write_text("ignored")
    with serve_app(tmp_path / "redis") as (url, app):
        services = services_of(app)
        services.experiments = ExperimentService(_RunServiceBackend(services.runs), kv=RedisKV(services.store.r),
                                                 generator=files_generator)
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {ADMIN}"}) as c:
            exp = c.post("/v1/experiments", json={"name": "w", "prompts": PROMPTS,
                                                  "base": {"outputs": {"a": "base a", "b": "base b"}}}).json()["experiment"]
            r = tb(str(out), "--experiment", exp, "--server", url, "--once", "--interval", "0.2", cwd=tmp_path)
            assert r.returncode == 0, r.stderr
            assert "submitted checkpoint-5" in r.stdout and "signal: stop=false" in r.stdout
            report = tmp_path / f"tiebreak-experiment-{exp}.html"     # the default report, in the current folder
            assert f"report: {report}" in r.stdout and "checkpoint-10" in report.read_text()
            assert "decision " not in r.stdout                        # nothing labelled, nothing decided
            rec = c.get(f"/v1/experiments/{exp}").json()
            names = [ck["checkpoint"] for ck in rec["checkpoints"]]
            assert names == ["checkpoint-5", "checkpoint-10", "model-step20.gguf"]
            assert rec["checkpoints"][2]["model"] == {"backend": "gguf", "path": str((out / "model-step20.gguf").resolve())}
            # the runs compare the outputs generated from the submitted paths
            run = rec["checkpoints"][0]["runs"]["vs_base"]["run_id"]
            nxt = c.get(f"/v1/runs/{run}/next", params={"annotator": "h"}).json()
            assert '{"step": 5}' in nxt["left"] + nxt["right"]
            # a second scan: only the folder that became complete is submitted
            (out / "checkpoint-15" / "config.json").write_text(json.dumps({"step": 15}))
            (out / "checkpoint-15" / "trainer_state.json").write_text("{}")
            r = tb(str(out), "--experiment", exp, "--server", url, "--once", "--interval", "0.2", cwd=tmp_path)
            assert r.returncode == 0, r.stderr
            assert r.stdout.count("submitted") == 1 and "submitted checkpoint-15" in r.stdout
            assert len(c.get(f"/v1/experiments/{exp}").json()["checkpoints"]) == 4
            # humans ("h", who holds the lease taken above) prefer the base everywhere: every checkpoint's comparison ends "worse", one line each
            rec = c.get(f"/v1/experiments/{exp}").json()
            label_runs(c, [r["run_id"] for ck in rec["checkpoints"] for r in ck["runs"].values()],
                       lambda left, right: "left" if left.startswith("base") else "right", annotator="h")
            rep = tmp_path / "reports" / "exp.html"
            r = tb(str(out), "--experiment", exp, "--server", url, "--once", "--interval", "0.2",
                   "--report", str(rep), cwd=tmp_path)
            assert r.returncode == 0, r.stderr
            lines = [ln for ln in r.stdout.splitlines() if ln.startswith("decision ")]
            assert [ln.split(":")[0] for ln in lines] == [f"decision {n}" for n in
                                                          ("checkpoint-5", "checkpoint-10", "model-step20.gguf",
                                                           "checkpoint-15")]
            assert all(": worse vs the base (θ̂ 0.000" in ln for ln in lines), lines
            assert f"report: {rep.resolve()}" in r.stdout and "signal: stop=true reason=regression" in r.stdout
            assert "Stop training (regression)" in rep.read_text()
        # bad input: one error line, exit 2
        r = tb(str(tmp_path / "missing"), "--experiment", exp, "--server", url, "--once", cwd=tmp_path)
        assert r.returncode == 2 and r.stderr.strip().startswith("error:") and "Traceback" not in r.stderr
        r = tb(str(out), "--experiment", "exp_nope", "--server", url, "--once", cwd=tmp_path)
        assert r.returncode == 2 and "does not exist" in r.stderr and "Traceback" not in r.stderr
        r = tb(str(out), "--experiment", exp, "--server", url, "--once", "--token", "wrong", cwd=tmp_path)
        assert r.returncode == 2 and "token" in r.stderr
        r = tb(str(out), "--experiment", exp, "--server", url, "--interval", "0", cwd=tmp_path)
        assert r.returncode == 2 and "--interval" in r.stderr
