"""Opt-in: the Label Studio connector against a REAL Label Studio server (not payloads written from its docs).

Run: ``make test-label-studio`` (creates /tmp/ls-venv with ``pip install label-studio`` once — never the project
venv —, starts Label Studio on 127.0.0.1 offline, runs this file, stops it). Or point it at a running server:
``LABEL_STUDIO_URL=http://127.0.0.1:8089 LABEL_STUDIO_TOKEN=<legacy API token> pytest -m slow <this file>``.
Label Studio must reach tiebreak on 127.0.0.1: start it with ``SSRF_PROTECTION_ENABLED=false`` (on by default
since 1.2x: webhooks to local addresses are refused otherwise).

Flow: tiebreak run (real ``tiebreak serve``) -> export tasks -> Label Studio project with tiebreak's labeling
config -> import tasks (predictions carry the sampler's priority as ``score``) -> webhook to tiebreak -> annotation
created through Label Studio's API -> tiebreak counts the label; an update of it is counted once.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import httpx
import pytest

from support.serve_process import ServeProcess
from tiebreak.services.integrations import parse_ls_webhook

pytestmark = pytest.mark.slow
LS_URL = os.environ.get("LABEL_STUDIO_URL", "").rstrip("/")
LS_TOKEN = os.environ.get("LABEL_STUDIO_TOKEN", "")
ADMIN = "admin-ls-test-token"
H = {"Authorization": f"Bearer {ADMIN}"}


def _ls_client() -> httpx.Client:
    if not LS_URL or not LS_TOKEN:
        pytest.skip("set LABEL_STUDIO_URL and LABEL_STUDIO_TOKEN (or run `make test-label-studio`)")
    c = httpx.Client(base_url=LS_URL, headers={"Authorization": f"Token {LS_TOKEN}"}, timeout=30)
    try:
        r = c.get("/api/projects/")
    except httpx.HTTPError as e:
        c.close()
        pytest.skip(f"Label Studio at {LS_URL} is unreachable: {e!r}")
    if r.status_code in (401, 403):
        c.close()
        pytest.fail(f"Label Studio rejected LABEL_STUDIO_TOKEN ({r.status_code}): {r.text[:300]} — it must be a "
                    "legacy API token (start with --enable-legacy-api-token)")
    assert r.status_code == 200, r.text
    return c


@pytest.fixture(scope="module")
def ls():
    c = _ls_client()
    try:
        yield c
    finally:
        c.close()


@pytest.fixture(scope="module")
def tiebreak(tmp_path_factory):
    with ServeProcess(tmp_path_factory.mktemp("ls-serve"), admin_token=ADMIN) as s:
        yield s


def _hook_calls(tiebreak) -> int:
    """Label Studio webhook deliveries tiebreak answered with 200 (its Prometheus request counter)."""
    text = httpx.get(f"{tiebreak.url}/metrics", headers=H, timeout=10).text
    for line in text.splitlines():
        if (line.startswith("tiebreak_http_requests_total{") and 'label-studio/webhook' in line
                and 'status="200"' in line and 'method="POST"' in line):
            return int(float(line.rsplit(" ", 1)[1]))
    return 0


class _Sink:
    """A loopback HTTP server that keeps the JSON bodies posted to it."""

    def __init__(self) -> None:
        got: queue.Queue = queue.Queue()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                got.put(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *a):
                pass

        self.got = got
        self.srv = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.srv.server_port}/hook"
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.srv.shutdown()
        self.srv.server_close()


def _wait_labels(tiebreak, rid: str, n: int, timeout: float = 20.0) -> dict:
    t0 = time.time()
    while True:
        st = httpx.get(f"{tiebreak.url}/v1/runs/{rid}", headers=H, timeout=10).json()
        if st["labels"] >= n or time.time() - t0 > timeout:
            return st
        time.sleep(0.2)


def test_real_label_studio_roundtrip(ls, tiebreak):
    t0 = time.time()
    u = tiebreak.url
    pairs = [{"id": f"p{i}", "prompt": f"question {i}", "base": f"base answer {i}", "tuned": f"tuned answer {i}",
              "judge_votes": {"j1": 0.3 + 0.1 * i}, "slices": ["edge-case"] if i % 2 else ["billing"]}
             for i in range(6)]
    r = httpx.post(f"{u}/v1/runs", json={"name": "ls-real", "pairs": pairs, "criteria": ["tone"]}, headers=H,
                   timeout=30)
    assert r.status_code == 201, r.text
    rid = r.json()["run_id"]
    r = httpx.get(f"{u}/v1/integrations/label-studio/{rid}/tasks?k=4", headers=H, timeout=30)
    assert r.status_code == 200, r.text
    export = r.json()
    tasks = export["tasks"]
    assert len(tasks) == 4

    # a project with tiebreak's labeling config: Label Studio validates it
    r = ls.post("/api/projects/", json={"title": f"tiebreak {rid}", "label_config": export["label_config"]})
    assert r.status_code == 201, r.text
    pid = r.json()["id"]
    try:
        _roundtrip(ls, tiebreak, rid, pid, tasks)
    finally:
        ls.delete(f"/api/projects/{pid}/")
    print(f"\nreal Label Studio round trip: {time.time() - t0:.1f} s")


def _roundtrip(ls, tiebreak, rid, pid, tasks):
    u = tiebreak.url
    r = ls.post(f"/api/projects/{pid}/import", params={"commit_to_project": "true"}, json=tasks)
    assert r.status_code == 201, r.text
    imp = r.json()
    assert imp["task_count"] == len(tasks) and imp["prediction_count"] == len(tasks), imp

    # Label Studio kept the data and the priority as the prediction score
    by_pair = {t["data"]["pair_id"]: t for t in tasks}
    r = ls.get("/api/tasks/", params={"project": pid, "page_size": 100, "fields": "all"})
    assert r.status_code == 200, r.text
    ls_tasks = r.json()["tasks"] if isinstance(r.json(), dict) else r.json()
    assert len(ls_tasks) == len(tasks)
    for t in ls_tasks:
        want = by_pair[t["data"]["pair_id"]]
        assert t["data"] == want["data"]
        assert t["meta"] == want["meta"]          # slices kept as task metadata, not as shown data
        preds = ls.get("/api/predictions/", params={"task": t["id"]}).json()
        assert len(preds) == 1, preds
        assert preds[0]["score"] == pytest.approx(want["predictions"][0]["score"])
        assert preds[0]["model_version"] == "tiebreak-priority"
    # the Data Manager's queue sorted by prediction score follows the sampler (highest priority first)
    r = ls.get("/api/tasks/", params={"project": pid, "page_size": 100, "fields": "all",
                                      "query": json.dumps({"ordering": ["-tasks:predictions_score"]})})
    assert r.status_code == 200, r.text
    assert [t["data"]["pair_id"] for t in r.json()["tasks"]] == [t["data"]["pair_id"] for t in tasks]

    # webhook -> tiebreak, with the admin token
    r = ls.post("/api/webhooks/", json={
        "project": pid, "url": f"{u}/v1/integrations/label-studio/webhook", "send_payload": True,
        "send_for_all_actions": False, "actions": ["ANNOTATION_CREATED", "ANNOTATION_UPDATED"],
        "headers": {"Authorization": f"Bearer {ADMIN}"}, "is_active": True})
    assert r.status_code == 201, r.text

    # and a second one to a local sink: the real payload, parsed by the connector's own function
    sink = _Sink()
    r = ls.post("/api/webhooks/", json={"project": pid, "url": sink.url, "send_payload": True,
                                        "send_for_all_actions": False, "actions": ["ANNOTATION_CREATED"]})
    assert r.status_code == 201, r.text

    first = next(t for t in ls_tasks if t["data"]["pair_id"] == tasks[0]["data"]["pair_id"])
    me = ls.get("/api/current-user/whoami").json()["id"]
    before = httpx.get(f"{u}/v1/runs/{rid}", headers=H, timeout=10).json()["labels"]
    result = [{"from_name": "verdict", "to_name": "prompt", "type": "choices", "value": {"choices": ["left"]}},
              {"from_name": "criterion_tone", "to_name": "prompt", "type": "choices",
               "value": {"choices": ["right"]}}]
    r = ls.post(f"/api/tasks/{first['id']}/annotations/", json={"result": result, "was_cancelled": False})
    assert r.status_code == 201, r.text
    ann_id = r.json()["id"]
    st = _wait_labels(tiebreak, rid, before + 1)
    assert st["labels"] == before + 1, (st, tiebreak.log())
    assert _hook_calls(tiebreak) == 1
    try:
        payload = sink.got.get(timeout=10)
    finally:
        sink.close()
    assert payload["action"] == "ANNOTATION_CREATED"
    assert parse_ls_webhook(payload) == (rid, {
        "pair_id": first["data"]["pair_id"], "annotator": f"ls:{me}", "verdict": "left",
        "criteria": {"tone": "right"}, "lease_id": None, "source": "label-studio"})

    # ANNOTATION_UPDATED by the same user: accepted by tiebreak, counted once
    result[0]["value"]["choices"] = ["right"]
    r = ls.patch(f"/api/annotations/{ann_id}/", json={"result": result})
    assert r.status_code == 200, r.text
    t0 = time.time()
    while _hook_calls(tiebreak) < 2 and time.time() - t0 < 10:
        time.sleep(0.2)
    assert _hook_calls(tiebreak) == 2          # delivered and answered 200 ...
    st = httpx.get(f"{u}/v1/runs/{rid}", headers=H, timeout=10).json()
    assert st["labels"] == before + 1          # ... and counted once
