"""A generate run streams (issue 10): through real HTTP, with the real Gemma-270M GGUF generating both sides
in the server's pipeline, the first `next` is answered (after a few 204 + Retry-After while the drawn pair is
made) long before every output exists; a run decided while generating stops generating."""

from __future__ import annotations

import time

import httpx
import pytest

from support.serve_process import ServeProcess

pytestmark = pytest.mark.integration
ADMIN = "admin-generate-stream"
MODEL = {"backend": "gguf", "preset": "gemma-3-270m-base", "n_ctx": 512}
N = 8


def test_first_pair_is_served_while_most_outputs_are_still_being_generated(tmp_path):
    prompts = [{"id": f"q{i}", "text": f"Write a short sentence about the number {i}."} for i in range(N)]
    with ServeProcess(tmp_path, admin_token=ADMIN, pipeline="local") as s, \
            httpx.Client(base_url=s.url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=30) as c:
        r = c.post("/v1/runs", json={"name": "gen-stream", "seed": 3, "judges": ["feature:length"],
                                     "generate": {"base": MODEL, "tuned": MODEL, "prompts": prompts,
                                                  "max_tokens": 8}})
        assert r.status_code == 201, r.text
        rid = r.json()["run_id"]
        t0 = time.monotonic()
        waits = 0
        while True:
            nxt = c.get(f"/v1/runs/{rid}/next", params={"annotator": "ann"})
            if nxt.status_code == 200:
                break
            assert nxt.status_code == 204, nxt.text
            assert int(nxt.headers["Retry-After"]) >= 1      # "being generated: ask again then"
            waits += 1
            assert time.monotonic() - t0 < 120, c.get(f"/v1/runs/{rid}").json()
            time.sleep(0.25)
        first_s = time.monotonic() - t0
        st = c.get(f"/v1/runs/{rid}").json()
        assert st["status"] == "generating" and st["n_pairs"] == N
        assert st["generated"] <= N / 2, (first_s, st["generated"])   # served long before the outputs exist
        assert waits >= 1                                            # nothing was generated at the first ask
        pair = nxt.json()
        assert pair["left"] and pair["right"] and pair["prompt"].startswith("Write a short sentence")
        lab = c.post(f"/v1/runs/{rid}/labels", json={"lease_id": pair["lease_id"], "pair_id": pair["pair_id"],
                                                     "annotator": "ann", "verdict": "left"})
        assert lab.status_code == 200 and lab.json()["labels"] == 1, lab.text
        st = c.get(f"/v1/runs/{rid}").json()
        assert st["labels"] == 1 and st["judged"] == 0 and st["progress"]["generated"] >= 2
        print(f"first pair after {first_s:.1f} s ({waits} answers 204)")
        # the rest (every output, then the judge, then "ready") is the pipeline's plain work, checked on Ray with
        # the same model in test_service_ray.py::test_generate_then_judge_and_survive_a_judge_crash


def test_a_run_decided_while_generating_stops_generating(tmp_path):
    """Budget 1: the first label ends the run (undecided at budget), and the pipeline stops making outputs
    nobody will label: the run is ready with most prompts never generated, and no judge runs."""
    n = 30
    prompts = [{"id": f"q{i}", "text": f"Write a short sentence about the number {i}."} for i in range(n)]
    with ServeProcess(tmp_path, admin_token=ADMIN, pipeline="local") as s, \
            httpx.Client(base_url=s.url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=30) as c:
        r = c.post("/v1/runs", json={"name": "gen-stop", "seed": 4, "judges": ["feature:length"], "budget": 1,
                                     "generate": {"base": MODEL, "tuned": MODEL, "prompts": prompts,
                                                  "max_tokens": 8}})
        assert r.status_code == 201, r.text
        rid = r.json()["run_id"]
        t0 = time.monotonic()
        while (nxt := c.get(f"/v1/runs/{rid}/next", params={"annotator": "ann"})).status_code != 200:
            assert nxt.status_code == 204 and time.monotonic() - t0 < 120, nxt.text
            time.sleep(0.25)
        pair = nxt.json()
        lab = c.post(f"/v1/runs/{rid}/labels", json={"lease_id": pair["lease_id"], "pair_id": pair["pair_id"],
                                                     "annotator": "ann", "verdict": "tie"})
        assert lab.json()["decision"] == "undecided", lab.text
        while (st := c.get(f"/v1/runs/{rid}").json())["status"] == "generating":
            assert time.monotonic() - t0 < 180, st
            time.sleep(0.25)
        assert st["status"] == "ready" and st["decision"] == "undecided", st
        assert st["generated"] < n / 2 and st["judged"] == 0, st
        assert c.get(f"/v1/runs/{rid}/next", params={"annotator": "ann"}).status_code == 204
