"""Trust boundaries of `tiebreak serve` through real HTTP (issue 12): labels only from lease holders, auth and a
body limit before parsing, scoped tokens, outbound policy, validated integration payloads, blinding, /metrics,
CSP, curl examples without a Content-Type."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import xml.etree.ElementTree as ET

import httpx
import psutil
import pytest

from support.serve_process import ServeProcess

pytestmark = pytest.mark.integration
ADMIN = "admin-trust-test-token"
H = {"Authorization": f"Bearer {ADMIN}"}
MAX_MB = 4


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with ServeProcess(tmp_path_factory.mktemp("trust"), admin_token=ADMIN,
                      env={"TIEBREAK_MAX_BODY_MB": str(MAX_MB)}) as s:
        yield s


def _pairs(n, prefix="p"):
    return [{"id": f"{prefix}{i}", "prompt": f"question {i}", "base": f"base {i}", "tuned": f"tuned {i}"}
            for i in range(n)]


def _run(server, n=30, **kw) -> str:
    r = httpx.post(server.url + "/v1/runs", json={"name": "trust", "pairs": _pairs(n), "judges": [], **kw},
                   headers=H, timeout=30)
    assert r.status_code == 201, r.text
    return r.json()["run_id"]


def _token(server, path, body) -> dict:
    r = httpx.post(server.url + path, json=body, headers=H)
    assert r.status_code == 201, r.text
    return r.json()


def _bearer(tok: str) -> dict:
    return {"Authorization": f"Bearer {tok}"}


def _error_shape(r: httpx.Response) -> list:
    d = r.json()["detail"]
    assert isinstance(d, list) and all({"loc", "msg", "type"} <= set(e) for e in d), r.text
    return d


# ------------------------------------------------------------------------------------------------ item 1
def test_label_for_undrawn_or_foreign_pair_is_409_and_changes_nothing(server):
    rid = _run(server, budget=2)
    alice = _bearer(_token(server, "/v1/annotators", {"name": "alice-1", "runs": [rid]})["token"])
    bob = _bearer(_token(server, "/v1/annotators", {"name": "bob-1", "runs": [rid]})["token"])
    u = f"{server.url}/v1/runs/{rid}"
    before = httpx.get(u, headers=H).json()
    for body in ({"pair_id": "p3", "verdict": "tie"}, {"pair_id": "p3", "verdict": "tie", "lease_id": "x" * 32}):
        r = httpx.post(u + "/labels", json=body, headers=alice)
        assert r.status_code == 409 and _error_shape(r)
    v = httpx.get(u + "/next", headers=alice).json()
    r = httpx.post(u + "/labels", json={"pair_id": v["pair_id"], "verdict": "left"}, headers=bob)
    assert r.status_code == 409                                         # bob holds no lease on it
    r = httpx.post(u + "/labels", json={"pair_id": v["pair_id"], "lease_id": v["lease_id"], "verdict": "left"},
                   headers=bob)
    assert r.status_code == 403                                         # alice's lease
    after = httpx.get(u, headers=H).json()
    assert (after["labels"], after["annotations"]) == (before["labels"], before["annotations"]) == (0, 0)
    r = httpx.post(u + "/labels", json={"pair_id": v["pair_id"], "lease_id": v["lease_id"], "verdict": "left"},
                   headers=alice)
    assert r.status_code == 200 and r.json()["accepted"] and not r.json()["duplicate"]
    # blinding (item 9): an annotator does not see the decision; the admin does
    assert r.json()["decision"] is None
    assert httpx.get(u, headers=H).json()["annotations"] == 1


# ------------------------------------------------------------------------------------------------ item 2
def _rss(server) -> int:
    return psutil.Process(server.proc.pid).memory_info().rss


def test_big_unauthenticated_body_is_refused_before_parsing(server):
    big = b'{"name": "x", "pairs": [' + b'{"id": "a", "prompt": "p", "base": "b", "tuned": "t"},' * 400_000 \
        + b'{"id": "z", "prompt": "p", "base": "b", "tuned": "t"}]}'
    assert len(big) > 20 * 2**20
    rss0 = _rss(server)
    for _ in range(3):
        r = httpx.post(server.url + "/v1/runs", content=big, headers={"Content-Type": "application/json"},
                       timeout=60)
        assert r.status_code == 401
    grew_mb = (_rss(server) - rss0) / 2**20
    print(f"RSS growth after 3 unauthenticated {len(big) / 2**20:.0f} MB POSTs: {grew_mb:.1f} MB")
    assert grew_mb < 50, f"server RSS grew {grew_mb:.0f} MB on unauthenticated bodies"
    assert _error_shape(r)[0]["loc"] == ["header", "Authorization"]
    # with a token: over the limit -> 413 without parsing, by Content-Length and when chunked
    r = httpx.post(server.url + "/v1/runs", content=big, headers=H, timeout=60)
    assert r.status_code == 413 and "POST /v1/runs/{id}/pairs" in r.text

    def chunks():
        for k in range(0, len(big), 1 << 20):
            yield big[k:k + (1 << 20)]

    r = httpx.post(server.url + "/v1/runs", content=chunks(), headers=H, timeout=60)
    assert r.status_code == 413 and _error_shape(r)[0]["type"] == "too_large"
    assert (_rss(server) - rss0) / 2**20 < 150
    # under the limit: fine
    _run(server, n=500)


def test_curl_without_content_type_works_and_401_has_the_error_shape(server):
    out = subprocess.run(["curl", "-s", "-H", f"Authorization: Bearer {ADMIN}", f"{server.url}/v1/runs", "-d",
                          json.dumps({"name": "curl", "pairs": _pairs(3), "judges": []})],
                         capture_output=True, text=True, timeout=30)
    assert "run_id" in json.loads(out.stdout), out.stdout
    r = httpx.get(f"{server.url}/v1/runs")
    assert r.status_code == 401 and _error_shape(r)[0]["loc"] == ["header", "Authorization"]
    r = httpx.get(f"{server.url}/v1/runs", headers=_bearer("nope"))
    assert r.status_code == 401 and _error_shape(r)


# ------------------------------------------------------------------------------------------------ item 3
def test_scoped_tokens_listing_revocation_unique_names(server):
    rid, other = _run(server), _run(server)
    u = server.url
    integ = _token(server, "/v1/tokens", {"kind": "integration", "name": "label-studio", "runs": [rid]})
    metrics = _token(server, "/v1/tokens", {"kind": "metrics", "name": "prometheus"})
    integ_h, metrics_h = _bearer(integ["token"]), _bearer(metrics["token"])
    # an integration token: the webhooks of its runs only
    for path in (f"/v1/runs/{rid}", f"/v1/runs/{rid}/next?annotator=x", f"/v1/integrations/label-studio/{rid}/tasks",
                 "/v1/runs", "/metrics"):
        assert httpx.get(u + path, headers=integ_h).status_code == 403, path
    assert httpx.post(u + "/v1/annotators", json={"name": "zz", "runs": [rid]}, headers=integ_h).status_code == 403
    tasks = httpx.get(f"{u}/v1/integrations/label-studio/{rid}/tasks?k=2", headers=H).json()["tasks"]

    def ls(run, pair, user):
        return {"action": "ANNOTATION_CREATED", "task": {"id": 1, "data": {"run_id": run, "pair_id": pair}},
                "annotation": {"id": 1, "completed_by": user,
                               "result": [{"from_name": "verdict", "type": "choices", "value": {"choices": ["left"]}}]}}

    hook = f"{u}/v1/integrations/label-studio/webhook"
    r = httpx.post(hook, json=ls(rid, tasks[0]["data"]["pair_id"], 7), headers=integ_h)
    assert r.status_code == 200 and r.json()["accepted"], r.text
    assert httpx.post(hook, json=ls(other, "p1", 7), headers=integ_h).status_code == 403
    # a metrics token: /metrics only
    assert httpx.get(u + "/metrics", headers=metrics_h).status_code == 200
    assert httpx.get(u + f"/v1/runs/{rid}", headers=metrics_h).status_code == 403
    # listing never shows tokens; revocation works at once on this replica
    listed = httpx.get(u + "/v1/tokens", headers=H).json()
    assert {integ["token_id"], metrics["token_id"]} <= {t["id"] for t in listed}
    assert integ["token"] not in json.dumps(listed)
    assert httpx.delete(f"{u}/v1/tokens/{metrics['token_id']}", headers=H).status_code == 204
    assert httpx.get(u + "/metrics", headers=metrics_h).status_code == 401
    # unique annotator names: one name is one person
    a = _token(server, "/v1/annotators", {"name": "carol", "runs": [rid]})
    r = httpx.post(u + "/v1/annotators", json={"name": "carol", "runs": [other]}, headers=H)
    assert r.status_code == 409 and a["token_id"] in r.text
    assert any(t["name"] == "carol" for t in httpx.get(u + "/v1/annotators", headers=H).json())
    assert httpx.delete(f"{u}/v1/annotators/{a['token_id']}", headers=H).status_code == 204
    assert httpx.get(f"{u}/v1/runs/{rid}/next", headers=_bearer(a["token"])).status_code == 401
    _token(server, "/v1/annotators", {"name": "carol", "runs": [other]})


def test_trainer_token_is_limited_to_its_experiment(server):
    u = server.url
    body = {"name": "e", "prompts": [{"id": "q1", "text": "hi"}], "base": {"outputs": {"q1": "hello"}},
            "judges": []}
    exp = httpx.post(u + "/v1/experiments", json=body, headers=H).json()["experiment"]
    exp2 = httpx.post(u + "/v1/experiments", json=body, headers=H).json()["experiment"]
    T = _bearer(_token(server, "/v1/tokens", {"kind": "trainer", "name": "trainer", "experiment": exp})["token"])
    assert httpx.get(f"{u}/v1/experiments/{exp}/signal", headers=T).status_code == 200
    r = httpx.post(f"{u}/v1/experiments/{exp}/checkpoints", json={"checkpoint": "c1", "outputs": {"q1": "hey"}},
                   headers=T)
    assert r.status_code == 201, r.text
    assert httpx.post(f"{u}/v1/experiments/{exp2}/checkpoints", json={"checkpoint": "c1", "outputs": {"q1": "x"}},
                      headers=T).status_code == 403
    assert httpx.get(f"{u}/v1/experiments/{exp2}/signal", headers=T).status_code == 403
    assert httpx.post(u + "/v1/experiments", json=body, headers=T).status_code == 403
    assert httpx.get(u + "/v1/runs", headers=T).status_code == 403
    r = httpx.post(u + "/v1/tokens", json={"kind": "trainer", "name": "t2", "experiment": "nope"}, headers=H)
    assert r.status_code == 404


@pytest.mark.parametrize("token", ["change-me", "short"])
def test_weak_admin_token_refused_at_start(tmp_path, token):
    env = {**__import__("os").environ, "TIEBREAK_ADMIN_TOKEN": token}
    p = subprocess.run([sys.executable, "-m", "tiebreak.services.cli", "serve", "--data-dir", str(tmp_path), "--pipeline",
                        "off"], env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "TIEBREAK_ADMIN_TOKEN" in p.stderr and "refusing to start" in p.stderr


# ------------------------------------------------------------------------------------------------ item 4
def test_outbound_urls_refused_by_policy_with_the_field_named(server):
    u = server.url
    cases = [
        ({"webhook_url": "http://169.254.169.254/latest/meta-data/"}, "webhook_url"),
        ({"webhook_url": "http://127.0.0.1:9/hook"}, "webhook_url"),                  # loopback: not allowed here
        ({"judges": [{"backend": "openai", "base_url": "http://[fd00:ec2::254]/v1", "model": "m"}]},
         "judges.0.base_url"),
        ({"judges": [{"backend": "openai", "base_url": "http://metadata.google.internal/v1", "model": "m"}]},
         "judges.0.base_url"),
        ({"judges": [{"backend": "openai", "base_url": "https://evil.example/v1", "model": "m",
                      "api_key_env": "TIEBREAK_ADMIN_TOKEN"}]}, "judges.0.api_key_env"),
    ]
    for extra, field in cases:
        body = {"name": "o", "pairs": _pairs(2), **extra}
        r = httpx.post(u + "/v1/runs", json=body, headers=H)
        assert r.status_code == 422, (extra, r.text)
        assert _error_shape(r)[0]["loc"] == ["body", *field.split(".")], r.text
    body = {"name": "e", "prompts": [{"id": "q1", "text": "hi"}], "base": {"outputs": {"q1": "x"}}, "judges": [],
            "webhook": "http://169.254.169.254/"}
    r = httpx.post(u + "/v1/experiments", json=body, headers=H)
    assert r.status_code == 422 and _error_shape(r)[0]["loc"] == ["body", "webhook"]


# --------------------------------------------------------------------------------------------- items 7, 8
def test_malformed_integration_payloads_are_422_and_never_fail_other_writes(server):
    rid = _run(server, n=60)
    u = server.url
    ls_hook, ar_hook = f"{u}/v1/integrations/label-studio/webhook", f"{u}/v1/integrations/argilla/webhook"
    task = {"id": 1, "data": {"run_id": rid, "pair_id": "p1"}}
    good_result = [{"from_name": "verdict", "type": "choices", "value": {"choices": ["left"]}}]
    bad = [
        (ls_hook, {"action": "ANNOTATION_CREATED", "task": task, "annotation": {"result": "abc", "completed_by": 1}}),
        (ls_hook, {"action": "ANNOTATION_CREATED", "task": {"id": 1, "data": "x"},
                   "annotation": {"result": good_result, "completed_by": 1}}),
        (ls_hook, {"action": "ANNOTATION_CREATED", "task": task, "annotation": "x"}),
        (ar_hook, {"type": "response.created", "data": {"record": "x", "values": {}}}),
        (ar_hook, {"type": "response.created", "data": "x"}),
    ]
    for url, payload in bad:
        r = httpx.post(url, json=payload, headers=H)
        assert r.status_code == 422, (payload, r.status_code, r.text)
        assert _error_shape(r)
    # a lone surrogate in completed_by is refused at the boundary while other writes go on
    pair = httpx.get(f"{u}/v1/integrations/label-studio/{rid}/tasks?k=1", headers=H).json()["tasks"][0]["data"]
    ok = {"action": "ANNOTATION_CREATED", "task": {"id": 1, "data": {"run_id": rid, "pair_id": pair["pair_id"]}},
          "annotation": {"completed_by": "u1", "result": good_result}}
    surrogate = json.dumps(ok).replace('"u1"', '"\\ud800"')          # JSON text with a lone surrogate escape
    assert "\\ud800" in surrogate
    other = _run(server, n=300)
    A = _bearer(_token(server, "/v1/annotators", {"name": "steady", "runs": [other]})["token"])
    codes: list[int] = []

    def label_other():
        with httpx.Client(base_url=u, headers=A) as c:
            for _ in range(40):
                v = c.get(f"/v1/runs/{other}/next").json()
                codes.append(c.post(f"/v1/runs/{other}/labels", json={"pair_id": v["pair_id"], "verdict": "tie"})
                             .status_code)

    th = threading.Thread(target=label_other)
    th.start()
    for _ in range(20):
        r = httpx.post(ls_hook, content=surrogate.encode(), headers={**H, "Content-Type": "application/json"})
        assert r.status_code == 422 and "completed_by" in json.dumps(_error_shape(r)), r.text
    th.join()
    assert codes == [200] * 40
    assert httpx.get(f"{u}/v1/runs/{other}", headers=H).json()["annotations"] == 40
    # the same pair with a real user is still accepted afterwards
    assert httpx.post(ls_hook, json=ok, headers=H).json()["accepted"] is True


def test_criteria_names_validated_and_escaped_in_label_studio_config(server):
    r = httpx.post(server.url + "/v1/runs", json={"name": "x", "pairs": _pairs(2), "judges": [],
                                                  "criteria": ['tone"/><Choice value="left'], }, headers=H)
    assert r.status_code == 422 and _error_shape(r)[0]["loc"][:2] == ["body", "criteria"]
    rid = _run(server, criteria=["tone", "fact check"])
    cfg = httpx.get(f"{server.url}/v1/integrations/label-studio/{rid}/tasks?k=1", headers=H).json()["label_config"]
    names = [c.get("name") for c in ET.fromstring(cfg).iter("Choices")]
    assert names == ["verdict", "criterion_tone", "criterion_fact check"]
    from tiebreak.services.integrations import label_config

    hostile = label_config(['a"/><Choice value="x'])        # escaped even if a name ever got past validation
    assert [c.get("name") for c in ET.fromstring(hostile).iter("Choices")][1] == 'criterion_a"/><Choice value="x'


# ------------------------------------------------------------------------------------------------ item 9
def test_annotate_page_headers_and_metrics_closed(server):
    _run(server, n=2)           # its own POST /v1/runs, so the metrics check below needs no other test to run first
    r = httpx.get(server.url + "/annotate")
    csp = r.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp and "default-src 'none'" in csp and "'unsafe-inline'" not in csp
    assert r.headers["x-frame-options"] == "DENY"
    assert httpx.get(server.url + "/metrics").status_code == 401
    m = httpx.get(server.url + "/metrics", headers=H)
    assert m.status_code == 200
    # requests that went through the auth/body guard are still counted under their route
    assert 'method="POST",route="/v1/runs",status="201"' in m.text
    assert 'route="unmatched",status="201"' not in m.text
