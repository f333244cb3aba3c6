"""Slices over real HTTP (`tiebreak serve` as a process): status shape, 422s naming the field, blind `next`."""

from __future__ import annotations

import httpx
import pytest

from support.serve_process import ServeProcess

pytestmark = pytest.mark.integration
ADMIN = "admin-test-token-slices"
H = {"Authorization": f"Bearer {ADMIN}"}


def _pairs(n, tag=lambda i: ["edge-case"] if i < 30 else ["billing", "es"] if i < 60 else None):
    return [{"id": f"p{i}", "prompt": f"question {i}", "base": f"base answer {i}", "tuned": f"tuned answer {i}",
             **({"slices": tag(i)} if tag(i) else {})} for i in range(n)]


def test_slices_over_http(tmp_path):
    with ServeProcess(tmp_path, admin_token=ADMIN) as s:
        u = s.url
        bad = [({"slices_of_interest": ["refunds"]}, "slices_of_interest", "'refunds' tags no pair"),
               ({"pairs": [{**_pairs(1)[0], "slices": [""]}]}, "slices", "non-empty"),
               ({"slices_of_interest": [f"s{i}" for i in range(51)]}, "slices_of_interest", "at most 50")]
        for extra, field, msg in bad:
            r = httpx.post(u + "/v1/runs", json={"name": "x", "pairs": _pairs(80), "judges": [], **extra},
                           headers=H, timeout=30)
            assert r.status_code == 422 and field in r.text and msg in r.text, r.text
        r = httpx.post(u + "/v1/runs", json={"name": "x", "pairs": _pairs(80), "judges": [], "seed": 2,
                                             "slices_of_interest": ["edge-case", "es"]}, headers=H, timeout=30)
        assert r.status_code == 201, r.text
        rid = r.json()["run_id"]
        assert r.json()["slice_warnings"] == []             # 30 pairs each: no warning
        tiny = httpx.post(u + "/v1/runs", json={"name": "x", "pairs": _pairs(40, tag=lambda i: ["t"] if i < 2 else None),
                                                "judges": []}, headers=H, timeout=30)
        assert tiny.status_code == 201 and "'t' has 2 pairs" in tiny.json()["slice_warnings"][0], tiny.text
        st = httpx.get(f"{u}/v1/runs/{rid}", headers=H).json()
        assert set(st["slices"]) == {"edge-case", "es"} and st["finished"] is False
        assert st["slices"]["es"] == {"n_pairs": 30, "labels": 0, "estimate": 0.5, "interval": [0.0, 1.0],
                                      "alpha": pytest.approx(0.05 / 3), "decision": "running"}
        assert st["alpha_split"].startswith("holm over 3 questions") and st["multiplicity"] == "holm"
        nxt = httpx.get(f"{u}/v1/runs/{rid}/next", params={"annotator": "a"}, headers=H)
        assert nxt.status_code == 200
        assert "slices" not in nxt.json() and "edge" not in nxt.text and "billing" not in nxt.text
        v = nxt.json()
        lab = httpx.post(f"{u}/v1/runs/{rid}/labels", json={"pair_id": v["pair_id"], "annotator": "a",
                                                             "verdict": "tie", "lease_id": v["lease_id"]},
                         headers=H)
        assert lab.status_code == 200, lab.text
        rep = httpx.get(f"{u}/v1/runs/{rid}/report", headers=H)
        assert rep.status_code == 200 and "slice intervals against one half" in rep.text
