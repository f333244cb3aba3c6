"""`tiebreak serve` as a real process over real HTTP (httpx), with the embedded Redis or a real redis-server."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import httpx
import numpy as np
import pytest

from support.serve_process import ServeProcess, free_port, redis_server_binary, shutdown_embedded_redis

pytestmark = pytest.mark.integration
ADMIN = "admin-test-token"
H = {"Authorization": f"Bearer {ADMIN}"}


def _pairs(n, seed=0, votes=True, prefix="p"):
    rng = np.random.default_rng(seed)
    return [{"id": f"{prefix}{i}", "prompt": f"question {i}", "base": f"base answer {i}", "tuned": f"tuned answer {i}",
             **({"judge_votes": {"j1": float(rng.uniform(0.3, 0.9)), "j2": None if i % 7 == 0 else 0.6}}
                if votes else {})} for i in range(n)]


def _verdict(v, tuned_wins=True):
    return "left" if v["left"].startswith("tuned") == tuned_wins else "right"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    d = tmp_path_factory.mktemp("serve")
    # the webhook receiver of these tests listens on 127.0.0.1: loopback is refused unless the server allows it
    with ServeProcess(d, admin_token=ADMIN, env={"TIEBREAK_OUTBOUND_ALLOW_LOOPBACK": "1"}) as s:
        yield s


def _run(server, **kw) -> str:
    body = {"name": "it", "pairs": _pairs(kw.pop("n", 200), votes=kw.pop("votes", True)), **kw}
    r = httpx.post(server.url + "/v1/runs", json=body, headers=H, timeout=30)
    assert r.status_code == 201, r.text
    return r.json()["run_id"]


def _annotator(server, name, runs):
    r = httpx.post(server.url + "/v1/annotators", json={"name": name, "runs": runs}, headers=H)
    assert r.status_code == 201, r.text
    return {"Authorization": f"Bearer {r.json()['token']}"}


def test_auth_roles_and_blindness(server):
    rid = _run(server)
    other = _run(server, n=20)
    A = _annotator(server, "alice", [rid])
    u = server.url
    assert httpx.get(f"{u}/v1/runs/{rid}").status_code == 401
    assert httpx.get(f"{u}/v1/runs/{rid}", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert httpx.get(f"{u}/v1/runs/{rid}", headers=A).status_code == 403            # admin endpoint
    assert httpx.get(f"{u}/v1/runs/{rid}/report", headers=A).status_code == 403
    assert httpx.post(f"{u}/v1/annotators", json={"name": "x", "runs": [rid]}, headers=A).status_code == 403
    assert httpx.get(f"{u}/v1/runs/{other}/next", headers=A).status_code == 403     # other run
    assert httpx.get(f"{u}/v1/runs/{rid}/next?annotator=bob", headers=A).status_code == 403
    r = httpx.get(f"{u}/v1/runs/{rid}/next", headers=A)
    assert r.status_code == 200
    body = r.text
    assert "j1" not in body and "judge" not in body and "base answer" in body and "tuned answer" in body
    assert set(r.json()) == {"pair_id", "lease_id", "lease_expires_at", "prompt", "left", "right", "criteria",
                             "progress"}
    # admin must say who labels
    r = httpx.get(f"{u}/v1/runs/{rid}/next", headers=H)
    assert r.status_code == 422 and "annotator" in r.text


def test_full_flow_status_report_metrics(server):
    rid = _run(server, criteria=["tone"], alpha=0.1)
    A = _annotator(server, "ann", [rid])
    u = server.url
    n = 0
    with httpx.Client(base_url=u, headers=A) as c:
        while True:
            r = c.get(f"/v1/runs/{rid}/next")
            if r.status_code == 204:
                break
            assert r.status_code == 200, r.text
            v = r.json()
            assert v["criteria"] == ["tone"]
            lab = {"pair_id": v["pair_id"], "lease_id": v["lease_id"], "verdict": _verdict(v),
                   "criteria": {"tone": _verdict(v)}}
            r = c.post(f"/v1/runs/{rid}/labels", json=lab)
            assert r.status_code == 200 and r.json()["duplicate"] is False
            assert c.post(f"/v1/runs/{rid}/labels", json=lab).json()["duplicate"] is True   # idempotent
            n += 1
            assert n < 200
    st = httpx.get(f"{u}/v1/runs/{rid}", headers=H).json()
    assert st["decision"] == "better" and st["labels"] == n and st["annotations"] == n
    # Holm over 2 questions: each starts at 0.1/2, a question decided at the second step is read at 0.1*2/3
    assert st["interval"][0] > 0.5 and st["multiplicity"] == "holm" and "family alpha 0.1" in st["alpha_split"]
    for a in (st["alpha"], st["criteria"]["tone"]["alpha"]):
        assert a == pytest.approx(0.05) or a == pytest.approx(0.1 * 2 / 3)
    assert st["criteria"]["tone"]["decision"] == "better" and st["votes"] == 200
    rep = httpx.get(f"{u}/v1/runs/{rid}/report", headers=H)
    assert rep.status_code == 200 and "<svg" in rep.text and "better" in rep.text and "http" not in \
        rep.text.replace("http://www.w3.org", "")
    assert httpx.get(f"{u}/metrics").status_code == 401                             # not open by default
    m = httpx.get(f"{u}/metrics", headers=H).text
    assert "tiebreak_labels_total" in m and 'route="/v1/runs/{run_id}/next"' in m
    docs = httpx.get(f"{u}/openapi.json").json()
    for path in ("/v1/runs", "/v1/runs/{run_id}", "/v1/runs/{run_id}/next", "/v1/runs/{run_id}/labels",
                 "/v1/runs/{run_id}/pairs", "/v1/runs/{run_id}/report", "/healthz", "/metrics"):
        assert path in docs["paths"], path
    assert httpx.get(f"{u}/docs").status_code == 200


def test_bad_input_is_4xx_naming_the_field(server):
    u = server.url
    rid = _run(server, n=10)
    cases = [
        ("post", "/v1/runs", {"name": "x", "pairs": [{"id": "a", "prompt": "", "base": "", "tuned": "",
                                                      "judge_votes": {"j": 1.5}}]}, "judge_votes"),
        ("post", "/v1/runs", {"name": "x", "pairs": _pairs(3), "alpha": 2}, "alpha"),
        ("post", "/v1/runs", {"name": "x", "pairs": _pairs(3), "judges": ["gpt-17"]}, "judges[0]"),
        ("post", "/v1/runs", {"name": "x", "pairs": _pairs(3), "colour": "red"}, "colour"),
        ("post", f"/v1/runs/{rid}/labels", {"pair_id": "p1", "annotator": "a", "verdict": "up"}, "verdict"),
        ("post", f"/v1/runs/{rid}/labels", {"pair_id": "zz", "annotator": "a", "verdict": "left"}, "pair_id"),
        ("post", f"/v1/runs/{rid}/pairs", {"pairs": _pairs(1)}, '"pairs","0","id"'),
        ("get", "/v1/runs/doesnotexist", None, "run"),
    ]
    for method, path, body, field in cases:
        r = httpx.request(method.upper(), u + path, json=body, headers=H)
        assert 400 <= r.status_code < 500, (path, r.status_code, r.text)
        assert field in r.text, (path, r.text)
    r = httpx.post(u + "/v1/runs", content=b"{not json", headers={**H, "Content-Type": "application/json"})
    assert r.status_code == 422
    assert httpx.get(f"{u}/v1/runs/{rid}", headers=H).json()["n_pairs"] == 10     # nothing stored was lost


def test_20_concurrent_annotators_never_share_a_live_lease(server):
    rid = _run(server, n=300, votes=False, judges=[])
    tokens = [_annotator(server, f"c{k}", [rid]) for k in range(20)]
    handed: list[tuple[str, str]] = []
    lock = threading.Lock()
    errors: list[str] = []

    def annotator(k: int) -> None:
        with httpx.Client(base_url=server.url, headers=tokens[k], timeout=30) as c:
            for _ in range(6):
                r = c.get(f"/v1/runs/{rid}/next")
                if r.status_code != 200:
                    errors.append(f"{r.status_code} {r.text}")
                    return
                v = r.json()
                with lock:
                    handed.append((v["pair_id"], f"c{k}"))
                time.sleep(0.01)
                r = c.post(f"/v1/runs/{rid}/labels", json={"pair_id": v["pair_id"], "lease_id": v["lease_id"],
                                                            "verdict": "tie"})
                if r.status_code != 200:
                    errors.append(r.text)

    threads = [threading.Thread(target=annotator, args=(k,)) for k in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    pids = [p for p, _ in handed]
    assert len(pids) == 120 and len(set(pids)) == 120      # leases never expired: every pair handed out once
    st = httpx.get(f"{server.url}/v1/runs/{rid}", headers=H).json()
    assert st["labels"] == 120


class _Hook(BaseHTTPRequestHandler):
    received: list[dict] = []
    fail_first = 2

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if _Hook.fail_first > 0:
            _Hook.fail_first -= 1
            self.send_response(503)
        else:
            _Hook.received.append({"body": body, "event": self.headers["X-Tiebreak-Event"]})
            self.send_response(204)
        self.end_headers()

    def log_message(self, *a):
        pass


def test_webhook_run_decided_with_retries(server):
    port = free_port()
    srv = HTTPServer(("127.0.0.1", port), _Hook)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        rid = _run(server, n=100, webhook_url=f"http://127.0.0.1:{port}/hook")
        A = _annotator(server, "w", [rid])
        with httpx.Client(base_url=server.url, headers=A) as c:
            while (r := c.get(f"/v1/runs/{rid}/next")).status_code == 200:
                v = r.json()
                c.post(f"/v1/runs/{rid}/labels", json={"pair_id": v["pair_id"], "verdict": _verdict(v)})
        t0 = time.time()
        while not _Hook.received and time.time() - t0 < 15:
            time.sleep(0.1)
        assert len(_Hook.received) == 1 and _Hook.fail_first == 0      # two failures, then delivered
        got = _Hook.received[0]
        assert got["event"] == "run.decided" and got["body"]["data"]["run_id"] == rid
        assert got["body"]["data"]["decision"] == "better"
    finally:
        srv.shutdown()


def test_kill9_api_then_restart_loses_nothing(tmp_path):
    s = ServeProcess(tmp_path, admin_token=ADMIN)
    try:
        s.start()
        rid = _run(s, n=2000, criteria=["accuracy"])
        A = _annotator(s, "k", [rid])
        rng = np.random.default_rng(0)
        with httpx.Client(base_url=s.url, headers=A) as c:
            for _ in range(40):
                v = c.get(f"/v1/runs/{rid}/next").json()
                c.post(f"/v1/runs/{rid}/labels", json={"pair_id": v["pair_id"], "verdict": rng.choice(["left", "right",
                       "tie"]).item(), "criteria": {"accuracy": "left"}})
            held = c.get(f"/v1/runs/{rid}/next").json()
        before = httpx.get(f"{s.url}/v1/runs/{rid}", headers=H).json()
        s.kill9()
        s.start()
        after = httpx.get(f"{s.url}/v1/runs/{rid}", headers=H).json()
        assert after == before
        assert before["labels"] == 40
        with httpx.Client(base_url=s.url, headers=A) as c:
            assert c.get(f"/v1/runs/{rid}/next").json()["lease_id"] == held["lease_id"]   # lease survives
            r = c.post(f"/v1/runs/{rid}/labels", json={"pair_id": held["pair_id"], "verdict": "left"})
            assert r.json()["labels"] == 41
    finally:
        s.stop()                         # also stops the embedded redis-server the killed process left running
    shutdown_embedded_redis(tmp_path)    # (a no-op by now)


def _wait_for_redis(port: int, timeout: float = 30.0) -> None:
    """Poll until a redis-server on ``port`` answers PING (it loads its AOF before it does)."""
    import redis

    client = redis.Redis(port=port, socket_connect_timeout=1, retry=None)
    t0 = time.monotonic()
    try:
        while True:
            try:
                if client.ping():
                    return
            except redis.ConnectionError:
                if time.monotonic() - t0 > timeout:
                    raise
            time.sleep(0.02)
    finally:
        client.close()


def test_redis_restart_with_aof_loses_nothing(tmp_path):
    port = free_port()
    conf = (tmp_path / "redis.conf")
    from pathlib import Path

    base = (Path(__file__).resolve().parents[2] / "deploy" / "redis.conf").read_text()
    conf.write_text(base + f"\nport {port}\ndir {tmp_path}\ndaemonize no\nbind 127.0.0.1\n")
    red = subprocess.Popen([redis_server_binary(), str(conf)], stdout=subprocess.DEVNULL)
    s = ServeProcess(tmp_path, admin_token=ADMIN, redis_url=f"redis://127.0.0.1:{port}/0")
    try:
        _wait_for_redis(port)
        s.start()
        rid = _run(s, n=500)
        A = _annotator(s, "r", [rid])
        with httpx.Client(base_url=s.url, headers=A) as c:
            for _ in range(15):
                v = c.get(f"/v1/runs/{rid}/next").json()
                c.post(f"/v1/runs/{rid}/labels", json={"pair_id": v["pair_id"], "verdict": "tie"})
        before = httpx.get(f"{s.url}/v1/runs/{rid}", headers=H).json()
        red.kill()                       # SIGKILL: only the AOF (appendfsync always) keeps the data
        red.wait(5)
        r = httpx.get(f"{s.url}/v1/runs/{rid}/next", headers=A)
        assert r.status_code in (200, 503)          # in-memory copy, or "store unavailable" — never a 500
        red = subprocess.Popen([redis_server_binary(), str(conf)], stdout=subprocess.DEVNULL)
        _wait_for_redis(port)            # it has replayed its AOF once it answers PING
        s.kill9()
        s.start()                        # a fresh API process reads everything back from the restarted Redis
        after = httpx.get(f"{s.url}/v1/runs/{rid}", headers=H).json()
        for k in ("labels", "annotations", "interval", "estimate", "decision", "n_pairs"):
            assert after[k] == before[k], k
    finally:
        try:
            s.stop()
        finally:
            red.kill()
            red.wait(5)
