"""services/settings.py: the one reader of the environment keeps every documented variable name working."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from tiebreak.services.settings import ClientSettings, Settings, StoreSettings

TOKEN = "t" * 40

ENV = {
    "TIEBREAK_ADMIN_TOKEN": TOKEN, "REDIS_URL": "redis://r:6379/0", "TIEBREAK_DATA_DIR": "/d",
    "RAY_ADDRESS": "ray://h:10001", "TIEBREAK_MAX_PIPELINES": "5", "TIEBREAK_WEBHOOK_URL": "https://hook.example",
    "TIEBREAK_ADVERTISE_URL": "http://me:8000", "TIEBREAK_OWNER_TTL_S": "3.5", "TIEBREAK_MAX_BODY_MB": "0.5",
    "TIEBREAK_METRICS_PUBLIC": "yes", "TIEBREAK_ANNOTATORS_SEE_DECISION": "1",
    "TIEBREAK_OUTBOUND_ALLOW": "api.openai.com, *.example.com", "TIEBREAK_OUTBOUND_ALLOW_LOOPBACK": "true",
    "TIEBREAK_OUTBOUND_ALLOW_LINK_LOCAL": "on", "TIEBREAK_SIGNAL_INTERVAL_S": "0.25", "TIEBREAK_APPENDFSYNC": "everysec",
}


def test_every_documented_variable_is_read(monkeypatch):
    for k, v in ENV.items():
        monkeypatch.setenv(k, v)
    s = Settings()
    assert (s.admin_token, s.redis_url, s.data_dir, s.ray_address) == (TOKEN, "redis://r:6379/0", "/d",
                                                                       "ray://h:10001")
    assert (s.max_pipelines, s.webhook_url, s.advertise_url, s.owner_ttl_s) == (5, "https://hook.example",
                                                                                "http://me:8000", 3.5)
    assert s.max_body_bytes == 2**19 and s.metrics_public and s.annotators_see_decision
    assert s.outbound_allow == ["api.openai.com", "*.example.com"]
    assert s.outbound_allow_loopback and s.outbound_allow_link_local
    assert s.signal_interval_s == 0.25 and s.appendfsync == "everysec" and not s.generated_admin_token
    assert StoreSettings().resolved_data_dir().as_posix() == "/d"


def test_keywords_win_over_the_environment_and_empty_means_unset(monkeypatch):
    monkeypatch.setenv("REDIS_URL", "redis://r:6379/0")
    monkeypatch.setenv("TIEBREAK_WEBHOOK_URL", "")
    monkeypatch.setenv("TIEBREAK_MAX_PIPELINES", "")
    monkeypatch.delenv("TIEBREAK_ADMIN_TOKEN", raising=False)
    s = Settings(redis_url=None, max_body_bytes=4096)
    assert s.redis_url is None and s.webhook_url is None and s.max_pipelines == 2 and s.max_body_bytes == 4096
    assert s.generated_admin_token and len(s.admin_token) >= 32      # never runs open
    assert s.signal_interval_s == 2.0 and s.outbound_allow == []


def test_a_bad_value_names_the_variable(monkeypatch):
    monkeypatch.setenv("TIEBREAK_OWNER_TTL_S", "ten")
    with pytest.raises(ValidationError, match="TIEBREAK_OWNER_TTL_S"):
        Settings(admin_token=TOKEN)


def test_client_settings(monkeypatch):
    for k in ("TIEBREAK_URL", "TIEBREAK_SERVER", "TIEBREAK_TOKEN", "TIEBREAK_ADMIN_TOKEN", "TIEBREAK_VOTE_CACHE"):
        monkeypatch.delenv(k, raising=False)
    assert ClientSettings().server_url is None
    monkeypatch.setenv("TIEBREAK_SERVER", "http://old:1")
    assert ClientSettings().server_url == "http://old:1"
    monkeypatch.setenv("TIEBREAK_URL", "http://new:2")          # TIEBREAK_URL first
    monkeypatch.setenv("TIEBREAK_TOKEN", "trainer-tok")
    c = ClientSettings()
    assert c.server_url == "http://new:2" and c.token == "trainer-tok" and c.admin_token == ""
