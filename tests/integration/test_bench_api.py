"""`make bench-api` (benchmarks/bench_api.py) against a real `tiebreak serve`: it reports, it does not crash."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from benchmarks.bench_api import _pct

ROOT = Path(__file__).resolve().parents[2]


def test_percentile_of_no_sample_is_none_not_a_crash():
    assert _pct(np.array([]), 50) is None
    assert _pct(np.array([1.0, 3.0]), 50) == 2.0


def _bench(*args: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "benchmarks.bench_api", *args], cwd=ROOT, capture_output=True,
                         text=True, timeout=180, env={**os.environ})
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_streaming_run_serves_its_first_pair_at_once_and_failures_are_counted():
    # a judge named but no pipeline: no vote ever arrives, yet pairs are served (a streaming run); the
    # budget ends the run within the benchmark, so later `next` calls answer 204 and are counted, not fatal
    r = _bench("--pairs", "300", "--seconds", "3", "--clients", "2", "--judge", "feature:length",
               "--pipeline", "off", "--budget", "10")
    assert r["first_next_s"] is not None and r["first_next_s"] < 30
    assert r["judged"] == 0 and r["status"] == "judging"
    assert r["labels_in_run"] == 9     # the budget of 10, less the pair the first-pair probe holds unlabelled
    assert r["errors"].get("204", 0) > 0
    assert r["round_trips"] >= 1 and r["round_trip_ms"]["p50"] is not None
