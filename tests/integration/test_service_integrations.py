"""Label Studio / Argilla connectors, against payloads written from their documented formats
(labelstud.io/guide/webhook_reference + task_format; docs.argilla.io webhooks_internals). Against a real Label
Studio server: tests/slow/test_label_studio_real.py (`make test-label-studio`); Argilla has no real-server test."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tiebreak.services.api.deps import services_of
from tiebreak.services.app import create_app
from tiebreak.services.settings import Settings
from tiebreak.services.store import RedisStore

ADMIN = "admin-integrations-test-token"
H = {"Authorization": f"Bearer {ADMIN}"}


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    store = RedisStore.open(data_dir=tmp_path_factory.mktemp("ig"))
    app = create_app(store=store, settings=Settings(admin_token=ADMIN, pipeline="off"))
    try:
        with TestClient(app) as c:
            yield c
    finally:
        store.close()


def _run(c, n=60, criteria=None, slices=False):
    rng = np.random.default_rng(1)
    pairs = [{"id": f"p{i}", "prompt": f"q{i}", "base": f"B{i}", "tuned": f"T{i}",
              "judge_votes": {"j": float(rng.uniform(0.2, 0.9))}} for i in range(n)]
    if slices:
        for i, p in enumerate(pairs):
            p["slices"] = ["edge-case"] if i % 2 else ["billing"]
    return c.post("/v1/runs", json={"name": "ig", "pairs": pairs, "criteria": criteria or []}, headers=H).json()["run_id"]


def _ls_event(task, choice, user=7, action="ANNOTATION_CREATED", crit=None):
    result = [{"from_name": "verdict", "to_name": "prompt", "type": "choices", "value": {"choices": [choice]}}]
    for c, v in (crit or {}).items():
        result.append({"from_name": f"criterion_{c}", "to_name": "prompt", "type": "choices",
                       "value": {"choices": [v]}})
    return {"action": action, "project": {"id": 1, "title": "tiebreak"},
            "task": {"id": 101, "data": task["data"], "project": 1},
            "annotation": {"id": 5, "result": result, "completed_by": user, "was_cancelled": False, "task": 101}}


def test_label_studio_tasks_and_webhooks(client):
    rid = _run(client, criteria=["tone"])
    r = client.get(f"/v1/integrations/label-studio/{rid}/tasks?k=5", headers=H)
    assert r.status_code == 200
    body = r.json()
    assert 'name="verdict"' in body["label_config"] and 'name="criterion_tone"' in body["label_config"]
    tasks = body["tasks"]
    scores = [t["predictions"][0]["score"] for t in tasks]
    assert len(tasks) == 5 and scores == sorted(scores, reverse=True)
    assert set(tasks[0]["data"]) == {"run_id", "pair_id", "prompt", "left", "right"}
    t = tasks[0]
    tuned_left = t["data"]["left"].startswith("T")
    r = client.post("/v1/integrations/label-studio/webhook", json=_ls_event(t, "Left", crit={"tone": "right"}),
                    headers=H)
    assert r.status_code == 200 and r.json()["duplicate"] is False, r.text
    # ANNOTATION_UPDATED by the same user: accepted, counted once
    r = client.post("/v1/integrations/label-studio/webhook",
                    json=_ls_event(t, "right", action="ANNOTATION_UPDATED"), headers=H)
    assert r.json()["duplicate"] is True
    st = client.get(f"/v1/runs/{rid}", headers=H).json()
    assert st["annotations"] == 1 and st["labels"] == 1
    comp = services_of(client.app).runs.runtime(rid).comps["overall"]
    assert list(comp.labels.values()) == [1.0 if tuned_left else 0.0]
    # other actions are acknowledged and ignored; malformed payloads are 4xx naming the field
    r = client.post("/v1/integrations/label-studio/webhook", json={"action": "TASKS_CREATED"}, headers=H)
    assert r.status_code == 200 and r.json()["accepted"] is False
    bad = _ls_event(t, "sideways", user=8)
    r = client.post("/v1/integrations/label-studio/webhook", json=bad, headers=H)
    assert r.status_code == 422 and '"annotation","result"' in r.text
    r = client.post("/v1/integrations/label-studio/webhook", json={"action": "ANNOTATION_CREATED"}, headers=H)
    assert r.status_code == 422
    assert client.post("/v1/integrations/label-studio/webhook", json=_ls_event(t, "left")).status_code == 401


def test_exports_carry_slices_as_metadata_never_as_shown_data(client):
    rid = _run(client, slices=True)
    body = client.get(f"/v1/integrations/label-studio/{rid}/tasks?k=6", headers=H).json()
    for t in body["tasks"]:
        assert set(t["data"]) == {"run_id", "pair_id", "prompt", "left", "right"}     # what the config shows
        assert t["meta"]["slices"] == (["edge-case"] if int(t["data"]["pair_id"][1:]) % 2 else ["billing"])
    assert "slices" not in body["label_config"] and "edge-case" not in body["label_config"]
    out = client.get(f"/v1/integrations/argilla/{rid}/records?k=4", headers=H).json()
    assert out["settings"]["metadata"][0]["name"] == "slices"
    assert set(out["settings"]["metadata"][0]["options"]) == {"edge-case", "billing"}
    assert all(r["metadata"]["slices"] for r in out["records"])
    assert all("slices" not in r["fields"] for r in out["records"])


def test_argilla_records_and_webhook(client):
    rid = _run(client)
    r = client.get(f"/v1/integrations/argilla/{rid}/records?k=4&suggestions=true", headers=H)
    recs = r.json()["records"]
    assert len(recs) == 4 and all(s["question_name"] == "verdict" for rec in recs for s in rec["suggestions"])
    plain = client.get(f"/v1/integrations/argilla/{rid}/records?k=4", headers=H).json()["records"]
    assert all("suggestions" not in rec for rec in plain)
    rec = recs[0]
    event = {"type": "response.created", "version": 1, "timestamp": "2026-01-01T00:00:00Z",
             "data": {"id": "0a0b", "status": "submitted", "values": {"verdict": {"value": "tie"}},
                      "record": {"id": "uuid-1", "external_id": rec["id"], "metadata": rec["metadata"],
                                 "fields": rec["fields"]},
                      "user": {"id": "u-1", "username": "ann"}}}
    r = client.post("/v1/integrations/argilla/webhook", json=event, headers=H)
    assert r.status_code == 200 and r.json()["accepted"] and not r.json()["duplicate"], r.text
    assert client.post("/v1/integrations/argilla/webhook", json=event, headers=H).json()["duplicate"]
    draft = {**event, "data": {**event["data"], "status": "draft"}}
    assert client.post("/v1/integrations/argilla/webhook", json=draft, headers=H).json()["accepted"] is False
    st = client.get(f"/v1/runs/{rid}", headers=H).json()
    assert st["labels"] == 1
    comp = services_of(client.app).runs.runtime(rid).comps["overall"]
    assert list(comp.labels.values()) == [0.5]
