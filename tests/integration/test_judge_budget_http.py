"""judge_budget "auto" through `tiebreak serve` over real HTTP: labels come first (the server runs without a
pipeline), then the server restarts with the in-process pipeline, which resumes judging the run, measures the
``feature:length`` juror on the 200 labels (coin flips: no signal), stops it and says so in status and report."""

from __future__ import annotations

import time

import httpx
import numpy as np
import pytest

from support.serve_process import ServeProcess
from tiebreak.services.runs.judge_budget import LEAD_PER_LABEL, LEAD_START

pytestmark = pytest.mark.integration
ADMIN = "admin-test-token"
H = {"Authorization": f"Bearer {ADMIN}"}
JUDGE = "feature:length"


def test_a_worthless_judge_is_stopped_after_a_restart_and_status_and_report_say_so(tmp_path):
    rng = np.random.default_rng(1)
    # base answers say "word", tuned ones "text" (lengths at random): the simulated annotator recognises the tuned
    # side, so its seeded coin flips are labels of the tuned side whatever left/right the server placed at random
    # -- the run, and the juror's measured value, are then the same every time
    pairs = [{"id": f"p{i}", "prompt": f"question {i}", "base": "word " * int(rng.integers(5, 80)),
              "tuned": "text " * int(rng.integers(5, 80))} for i in range(400)]
    with ServeProcess(tmp_path, admin_token=ADMIN, pipeline="off") as s:
        u = s.url
        bad = httpx.post(u + "/v1/runs", headers=H, json={"name": "x", "pairs": pairs[:2], "judge_budget": "most"})
        assert bad.status_code == 422 and "judge_budget" in bad.text
        r = httpx.post(u + "/v1/runs", headers=H, timeout=30,
                       json={"name": "budget", "pairs": pairs, "judges": [JUDGE], "judge_budget": "auto",
                             "seed": 5, "alpha": 0.001})
        assert r.status_code == 201, r.text
        rid = r.json()["run_id"]
        tok = httpx.post(u + "/v1/annotators", headers=H, json={"name": "ann", "runs": [rid]}).json()["token"]
        with httpx.Client(base_url=u, headers={"Authorization": f"Bearer {tok}"}, timeout=30) as c:
            for _ in range(200):                 # labels before any vote: coin flips, unrelated to length
                v = c.get(f"/v1/runs/{rid}/next").json()
                tuned_better, tuned_left = bool(rng.integers(2)), v["left"].startswith("text")
                verdict = "left" if tuned_better == tuned_left else "right"
                assert c.post(f"/v1/runs/{rid}/labels", json={"pair_id": v["pair_id"], "lease_id": v["lease_id"],
                                                               "verdict": verdict}).status_code == 200
        st = httpx.get(f"{u}/v1/runs/{rid}", headers=H).json()
        assert st["status"] == "judging" and st["judge_budget"] == "auto"
        assert st["judges_value"][JUDGE]["state"] == "running" and st["judges_value"][JUDGE]["pairs_voted"] == 0
        # pay as you go over HTTP: the 200 labelled pairs and its lead (the API model once dropped this field)
        assert st["judges_value"][JUDGE]["pairs_allowed"] == 200 + LEAD_START + int(LEAD_PER_LABEL * 200), st
        s.stop()
        s.pipeline = "local"
        s.start()                                   # resume_all: the pipeline judges the run now
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            st = httpx.get(f"{u}/v1/runs/{rid}", headers=H, timeout=30).json()
            if st["status"] != "judging":
                break
            time.sleep(0.5)
        v = st["judges_value"][JUDGE]
        assert st["status"] == "ready" and st["judged"] == 400, st
        assert v["state"] == "stopped-worthless" and v["stopped_at_labels"] == 200, v
        assert v["pairs_voted"] <= 40 and v["stopped_by"] == "trial" and v["cpu_s"] >= 0
        rep = httpx.get(f"{u}/v1/runs/{rid}/report", headers=H, timeout=60).text
        assert "What the judges were worth" in rep and "stopped-worthless" in rep
