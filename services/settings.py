"""Service settings (env + `tiebreak serve` options). docs/deploy.md ("Security") lists the environment variables."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _env_list(name: str) -> list[str]:
    return [x.strip() for x in os.environ.get(name, "").split(",") if x.strip()]


@dataclass
class Settings:
    admin_token: str = field(default_factory=lambda: os.environ.get("TIEBREAK_ADMIN_TOKEN") or "")
    redis_url: str | None = field(default_factory=lambda: os.environ.get("REDIS_URL") or None)
    data_dir: str | None = field(default_factory=lambda: os.environ.get("TIEBREAK_DATA_DIR") or None)
    lease_ttl_s: float = 600.0
    pipeline: str = "ray"                  # "ray" | "local" | "off"
    ray_address: str | None = field(default_factory=lambda: os.environ.get("RAY_ADDRESS") or None)
    batch_size: int = 4
    max_pipelines: int = field(default_factory=lambda: int(os.environ.get("TIEBREAK_MAX_PIPELINES") or 2))
    webhook_url: str | None = field(default_factory=lambda: os.environ.get("TIEBREAK_WEBHOOK_URL") or None)
    webhook_retries: int = 5
    webhook_backoff_s: float = 0.5
    public_url: str | None = None          # for links in exported tasks (Label Studio / Argilla)
    # several replicas on one Redis (services/runs.py, docs/deploy.md): where the others reach this one, and
    # how long a run's ownership lease lasts without renewal (a killed replica's runs move after this)
    advertise_url: str | None = field(default_factory=lambda: os.environ.get("TIEBREAK_ADVERTISE_URL") or None)
    owner_ttl_s: float = field(default_factory=lambda: float(os.environ.get("TIEBREAK_OWNER_TTL_S") or 10.0))
    # request bodies above this get 413 before they are read (a 10,000-pair run with ~1 KB texts is ~30 MB);
    # bigger runs: POST /v1/runs/{id}/pairs in batches
    max_body_bytes: int = field(default_factory=lambda: int(float(os.environ.get("TIEBREAK_MAX_BODY_MB") or 32)
                                                            * 2**20))
    # GET /metrics without a token (e.g. scraped only from inside the cluster); else admin or a metrics token
    metrics_public: bool = field(default_factory=lambda: _env_flag("TIEBREAK_METRICS_PUBLIC"))
    # label responses tell annotator tokens the run's decision (a blinding leak in a study: off by default)
    annotators_see_decision: bool = field(default_factory=lambda: _env_flag("TIEBREAK_ANNOTATORS_SEE_DECISION"))
    # outbound requests (judge/generator base_url, webhook_url): see services/outbound.py
    outbound_allow: list[str] = field(default_factory=lambda: _env_list("TIEBREAK_OUTBOUND_ALLOW"))
    outbound_allow_loopback: bool = field(default_factory=lambda: _env_flag("TIEBREAK_OUTBOUND_ALLOW_LOOPBACK"))
    outbound_allow_link_local: bool = field(
        default_factory=lambda: _env_flag("TIEBREAK_OUTBOUND_ALLOW_LINK_LOCAL"))

    def __post_init__(self) -> None:
        if not self.admin_token:
            # no token configured: generate one (printed by `tiebreak serve`), never run open
            self.admin_token = secrets.token_urlsafe(24)
            self.generated_admin_token = True
        else:
            self.generated_admin_token = False
