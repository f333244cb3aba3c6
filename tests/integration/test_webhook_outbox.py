"""`run.decided` is delivered at least once: the event is written to a Redis outbox with the decision, so an API
killed -9 before delivering it delivers it after its restart, with an idempotency key (issue 12, item 6)."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import httpx
import pytest

from support.serve_process import ServeProcess, free_port

pytestmark = pytest.mark.integration
ADMIN = "admin-outbox-token"
H = {"Authorization": f"Bearer {ADMIN}"}


class _Receiver(BaseHTTPRequestHandler):
    got: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Receiver.got.append({"key": self.headers.get("Idempotency-Key"),
                              "delivery": self.headers.get("X-Tiebreak-Delivery"), "body": body})
        self.send_response(200)
        self.end_headers()

    def log_message(self, *a) -> None:
        pass


def test_run_decided_survives_kill9_before_delivery(tmp_path):
    hook_port = free_port()                     # nothing listens there yet: every delivery attempt fails
    s = ServeProcess(tmp_path, admin_token=ADMIN, env={"TIEBREAK_OUTBOUND_ALLOW_LOOPBACK": "1"})
    srv = None
    try:
        s.start()
        pairs = [{"id": f"p{i}", "prompt": f"q {i}", "base": f"base {i}", "tuned": f"tuned {i}"} for i in range(100)]
        r = httpx.post(f"{s.url}/v1/runs", headers=H, json={
            "name": "outbox", "pairs": pairs, "webhook_url": f"http://127.0.0.1:{hook_port}/hook"})
        rid = r.json()["run_id"]
        with httpx.Client(base_url=s.url, headers=H) as c:
            while (r := c.get(f"/v1/runs/{rid}/next?annotator=a")).status_code == 200:
                v = r.json()
                c.post(f"/v1/runs/{rid}/labels", json={"pair_id": v["pair_id"], "lease_id": v["lease_id"],
                                                       "annotator": "a",
                                                       "verdict": "left" if v["left"].startswith("tuned") else "right"})
            st = c.get(f"/v1/runs/{rid}").json()
        assert st["decision"] == "better"
        time.sleep(0.3)                         # a first delivery attempt fails (connection refused)
        s.kill9()                               # before any delivery succeeded
        _Receiver.got = []
        srv = HTTPServer(("127.0.0.1", hook_port), _Receiver)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        s.start()                               # the restarted process finds the event in the outbox
        t0 = time.time()
        while not _Receiver.got and time.time() - t0 < 20:
            time.sleep(0.1)
        assert _Receiver.got, "run.decided was lost with the killed process"
        first = _Receiver.got[0]
        assert first["body"]["event"] == "run.decided" and first["body"]["data"]["run_id"] == rid
        assert first["body"]["data"]["decision"] == "better"
        assert first["key"] and first["key"] == first["delivery"]
        assert {g["key"] for g in _Receiver.got} == {first["key"]}     # redeliveries carry the same key
    finally:
        if srv is not None:
            srv.shutdown()
        s.stop()
