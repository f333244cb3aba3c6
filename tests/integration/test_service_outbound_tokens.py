"""Outbound policy, API-key host binding and token expiry (issue 12, items 3 and 4)."""

from __future__ import annotations

import pytest

from tiebreak.judges.backends import OpenAIBackend, env_api_key
from tiebreak.services.outbound import OutboundPolicy
from tiebreak.services.store import RedisStore
from tiebreak.services.tokens import TokenRegistry, admin_token_problem


def test_environment_api_key_only_goes_to_its_bound_host(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-server-secret")
    monkeypatch.delenv("TIEBREAK_API_KEY_HOSTS", raising=False)
    anywhere = OpenAIBackend("http://attacker.example:8000/v1", "m")
    assert "authorization" not in anywhere._client.headers          # was "Bearer sk-server-secret"
    anywhere.close()
    openai = OpenAIBackend("https://api.openai.com/v1", "gpt")
    assert openai._client.headers["authorization"] == "Bearer sk-server-secret"
    openai.close()
    monkeypatch.setenv("MY_KEY", "k2")
    with pytest.raises(ValueError, match="not bound"):
        env_api_key("http://gpu.internal/v1", "MY_KEY")
    monkeypatch.setenv("TIEBREAK_API_KEY_HOSTS", "MY_KEY=gpu.internal")
    assert env_api_key("http://gpu.internal/v1", "MY_KEY") == "k2"
    with pytest.raises(ValueError, match="may only be sent"):
        env_api_key("http://other.internal/v1", "MY_KEY")
    assert env_api_key("https://api.openai.com/v1", None) is None    # OPENAI_API_KEY no longer bound


def test_outbound_policy_defaults_and_settings():
    p = OutboundPolicy()
    for url in ("http://169.254.169.254/latest/meta-data/", "http://[fd00:ec2::254]/", "http://[fe80::1]/",
                "http://metadata.google.internal/computeMetadata/v1/", "http://127.0.0.1:8000/v1",
                "http://localhost/v1", "http://[::1]/v1", "http://0.0.0.0/", "ftp://host/x", "http:///x"):
        assert p.problem(url), url
    for url in ("http://10.0.0.5:8001/v1", "https://api.openai.com/v1", "http://192.168.1.20/hook"):
        assert p.problem(url) is None, url
    assert OutboundPolicy(allow_loopback=True).problem("http://127.0.0.1:8000/v1") is None
    assert OutboundPolicy(allow_loopback=True).problem("http://169.254.169.254/") is not None
    allow = OutboundPolicy(allow=["api.openai.com", "*.corp.example", "10.1.0.0/16", "127.0.0.1"])
    assert allow.problem("https://api.openai.com/v1") is None
    assert allow.problem("http://judge.corp.example/v1") is None
    assert allow.problem("http://10.1.2.3/v1") is None
    assert allow.problem("http://127.0.0.1:9/v1") is None             # named explicitly
    assert "allow-list" in allow.problem("http://10.2.0.1/v1")
    assert "allow-list" in allow.problem("https://evil.example/")


def test_token_expiry_and_revocation_with_an_injected_clock(tmp_path):
    store = RedisStore.open(data_dir=tmp_path)
    try:
        reg = TokenRegistry(store, "x" * 32)
        tok, rec = reg.create("integration", name="ls", runs=["r1"], expires_in_s=60)
        t0 = rec["created_at"]
        p, why = reg.resolve(tok, now=t0 + 59)
        assert p is not None and p.role == "integration" and p.runs == frozenset({"r1"}) and why == ""
        p, why = reg.resolve(tok, now=t0 + 61)
        assert p is None and "expired" in why
        tok2, rec2 = reg.create("annotator", name="dora", runs=["r1"])
        assert reg.resolve(tok2)[0].name == "dora"
        reg.revoke(rec2["id"])
        assert reg.resolve(tok2) == (None, "unknown token")
        assert [r["id"] for r in reg.list()] == [rec["id"]]
    finally:
        store.close()


def test_weak_admin_tokens():
    for t in ("change-me", "CHANGE-ME", "admin", "short-token", "a" * 40):
        assert admin_token_problem(t), t
    assert admin_token_problem("admin-test-token") is None
