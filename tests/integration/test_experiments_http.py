"""/v1/experiments over real HTTP: the real app (uvicorn + embedded Redis), runs labelled through the ordinary
run queue, the signal, the webhook, validation errors, persistence across an app restart."""

from __future__ import annotations

import time

import httpx
import pytest
from experiment_server import ADMIN, label_runs, serve_app, webhook_receiver

from tiebreak.services.api.deps import services_of

pytestmark = pytest.mark.integration

N = 10
PROMPTS = [{"id": f"p{i}", "text": f"question {i}"} for i in range(N)]


def outs(tag: str) -> dict[str, str]:
    return {f"p{i}": f"{tag}: answer {i}" for i in range(N)}


def prefer_rank(order: list[str]):
    """A simulated annotator that prefers the output whose tag ranks higher in `order`."""
    def pick(left: str, right: str) -> str:
        lr, rr = order.index(left.split(":")[0]), order.index(right.split(":")[0])
        return "left" if lr > rr else "right" if rr > lr else "tie"
    return pick


def test_experiment_lifecycle_over_http(tmp_path):
    with serve_app(tmp_path / "redis") as (url, app), webhook_receiver() as (hook, got), \
            httpx.Client(base_url=url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=30) as c:
        r = c.post("/v1/experiments", json={"name": "sft", "prompts": PROMPTS, "base": {"outputs": outs("base")},
                                            "judges": [], "alpha": 0.05, "patience": 2, "webhook": hook})
        assert r.status_code == 201, r.text
        exp = r.json()["experiment"]
        # humans rank: base < c1 (improves), then c2 and c3 are worse than c1
        pick = prefer_rank(["c3", "c2", "base", "c1"])
        r = c.post(f"/v1/experiments/{exp}/checkpoints", json={"checkpoint": "c1", "outputs": outs("c1")})
        assert r.status_code == 201, r.text
        runs1 = r.json()["runs"]
        assert len(runs1) == 1
        st = c.get(f"/v1/runs/{runs1[0]}").json()            # an ordinary run of the service
        assert st["n_pairs"] == N and st["alpha"] == pytest.approx(0.05 * 6 / 3.141592653589793**2)
        label_runs(c, runs1, pick)
        sig = c.get(f"/v1/experiments/{exp}/signal").json()
        assert sig["best_checkpoint"] == "c1" and not sig["stop"]
        assert sig["checkpoints"][0]["vs_base"]["decision"] == "better"
        for name in ("c2", "c3"):
            r = c.post(f"/v1/experiments/{exp}/checkpoints", json={"checkpoint": name, "outputs": outs(name)})
            ids = r.json()["runs"]
            assert len(ids) == 2                                # vs base and vs the best (c1)
            label_runs(c, ids, pick)
        # the webhook fires when the last run decides, before anyone reads the signal (the service's watcher)
        t0 = time.time()
        while not any(e["data"].get("stop") for e in got) and time.time() - t0 < 15:
            time.sleep(0.05)
        assert any(e["data"].get("stop") for e in got), got
        sig = c.get(f"/v1/experiments/{exp}/signal").json()
        assert sig["stop"] is True and sig["reason"] == "regression" and sig["best_checkpoint"] == "c1"
        assert [ck["checkpoint"] for ck in sig["checkpoints"]] == ["c1", "c2", "c3"]
        assert [ck["decision"] for ck in sig["checkpoints"]] == ["better", "worse", "worse"]
        assert sig["checkpoints"][2]["vs_best"]["against"] == "c1"
        # the webhook saw the best checkpoint appear and the stop
        events = [(e["event"], e["data"]["stop"], e["data"]["best_checkpoint"]) for e in got
                  if e["event"] == "experiment.signal"]
        assert ("experiment.signal", False, "c1") in events and ("experiment.signal", True, "c1") in events
        # errors: 4xx naming the field, never a 500
        r = c.post(f"/v1/experiments/{exp}/checkpoints", json={"checkpoint": "c2", "outputs": outs("c2")})
        assert r.status_code == 409 and r.json()["detail"][0]["loc"][-1] == "checkpoint"
        r = c.post(f"/v1/experiments/{exp}/checkpoints", json={"checkpoint": "c9", "outputs": {"p0": "x"}})
        assert r.status_code == 422 and "missing outputs" in r.json()["detail"][0]["msg"]
        r = c.post(f"/v1/experiments/{exp}/checkpoints", json={"checkpoint": "c9"})
        assert r.status_code == 422 and "exactly one of model" in r.text
        r = c.post("/v1/experiments", json={"name": "x", "prompts": PROMPTS, "base": {"outputs": outs("b")},
                                            "alpha": 2})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"][-1] == "alpha"
        r = c.post("/v1/experiments", json={"name": "x", "prompts": PROMPTS, "base": {"backend": "nope"}})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"][-2:] == ["base", "backend"]
        assert c.get("/v1/experiments/exp_missing/signal").status_code == 404
        assert httpx.get(f"{url}/v1/experiments/{exp}/signal").status_code == 401
        assert httpx.get(f"{url}/v1/experiments/{exp}/signal",
                         headers={"Authorization": "Bearer wrong"}).status_code == 401

    # a restarted service (the embedded Redis stopped with the first one, reopened from its data dir) answers the
    # same signal
    from starlette.testclient import TestClient

    from tiebreak.services.app import create_app
    from tiebreak.services.settings import Settings
    from tiebreak.services.store import RedisStore
    with RedisStore.open(data_dir=tmp_path / "redis") as store:
        app2 = create_app(store=store, settings=Settings(admin_token=ADMIN, pipeline="off"),
                          routers=["tiebreak.services.api.health", "tiebreak.services.api.runs", "tiebreak.services.api.experiments"])
        with TestClient(app2) as tc:
            sig2 = tc.get(f"/v1/experiments/{exp}/signal", headers={"Authorization": f"Bearer {ADMIN}"}).json()
    assert (sig2["stop"], sig2["reason"], sig2["best_checkpoint"]) == (True, "regression", "c1")


def test_model_spec_checkpoint_generates_with_a_real_gguf(tmp_path):
    """A checkpoint given as a MODEL spec: the service generates its outputs (real GGUF, Gemma-270M through
    xllamacpp) in the background, then creates its runs; a bad spec ends "failed" with the error."""
    spec = {"backend": "gguf", "preset": "gemma-3-270m-base", "n_ctx": 512, "max_tokens": 6}
    with serve_app(tmp_path / "redis") as (url, _app), \
            httpx.Client(base_url=url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=60) as c:
        exp = c.post("/v1/experiments", json={"name": "gen", "prompts": PROMPTS[:2], "base": {"outputs": outs("base")},
                                              "judges": []}).json()["experiment"]
        r = c.post(f"/v1/experiments/{exp}/checkpoints", json={"checkpoint": "g1", "model": spec})
        assert r.status_code == 201 and r.json()["status"] == "generating" and r.json()["runs"] == []
        r = c.post(f"/v1/experiments/{exp}/checkpoints",
                   json={"checkpoint": "bad", "model": {"backend": "gguf", "path": str(tmp_path / "none.gguf")}})
        assert r.status_code == 201
        t0 = time.time()
        while time.time() - t0 < 180:
            cks = c.get(f"/v1/experiments/{exp}").json()["checkpoints"]
            if all(ck["status"] != "generating" for ck in cks):
                break
            time.sleep(0.2)
        g1, bad = cks
        assert g1["status"] == "ready" and bad["status"] == "failed" and "none.gguf" in bad["error"]
        run = g1["runs"]["vs_base"]["run_id"]
        p = c.get(f"/v1/runs/{run}/next", params={"annotator": "h"}).json()
        sides = {p["left"], p["right"]}
        assert any(s.startswith("base:") for s in sides)
        assert any(not s.startswith("base:") for s in sides)      # the generated output
        sig = c.get(f"/v1/experiments/{exp}/signal").json()
        assert [ck["decision"] for ck in sig["checkpoints"]] == ["running", "failed"]


def test_judged_checkpoints_reuse_the_vote_cache(tmp_path):
    """judges: a real GGUF judge (Gemma-270M, local pipeline) votes on the checkpoint's run; a later checkpoint
    whose outputs did not change is judged entirely from the vote cache (no new cache entries)."""
    with serve_app(tmp_path / "redis", pipeline="local") as (url, app), \
            httpx.Client(base_url=url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=60) as c:
        exp = c.post("/v1/experiments", json={"name": "judged", "prompts": PROMPTS[:3], "judges": ["gemma-3-270m-base"],
                                              "base": {"outputs": outs("base")}}).json()["experiment"]
        cache = services_of(app).store.r

        def judged(run_id: str) -> dict:
            t0 = time.time()
            while time.time() - t0 < 180:
                st = c.get(f"/v1/runs/{run_id}").json()
                if st["status"] == "ready" or st["error"]:
                    return st
                time.sleep(0.2)
            raise AssertionError(f"run {run_id} not judged: {st}")

        r1 = c.post(f"/v1/experiments/{exp}/checkpoints", json={"checkpoint": "c1", "outputs": outs("c1")}).json()
        st1 = judged(r1["vs_base"])
        assert st1["votes"] == 3 and st1["judges"] == ["gemma-3-270m-base"] and st1["error"] is None
        n_cached = cache.hlen("tb:votecache")
        assert n_cached > 0
        r2 = c.post(f"/v1/experiments/{exp}/checkpoints", json={"checkpoint": "c2", "outputs": outs("c1")}).json()
        st2 = judged(r2["vs_base"])
        assert st2["votes"] == 3 and cache.hlen("tb:votecache") == n_cached   # every vote from the cache
