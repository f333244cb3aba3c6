"""Service settings (env + `tiebreak serve` options)."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field


@dataclass
class Settings:
    admin_token: str = field(default_factory=lambda: os.environ.get("TIEBREAK_ADMIN_TOKEN") or "")
    redis_url: str | None = field(default_factory=lambda: os.environ.get("REDIS_URL") or None)
    data_dir: str | None = field(default_factory=lambda: os.environ.get("TIEBREAK_DATA_DIR") or None)
    lease_ttl_s: float = 600.0
    pipeline: str = "ray"                  # "ray" | "local" | "off"
    ray_address: str | None = field(default_factory=lambda: os.environ.get("RAY_ADDRESS") or None)
    batch_size: int = 4
    webhook_url: str | None = field(default_factory=lambda: os.environ.get("TIEBREAK_WEBHOOK_URL") or None)
    webhook_retries: int = 5
    webhook_backoff_s: float = 0.5
    public_url: str | None = None          # for links in exported tasks (Label Studio / Argilla)
    # several replicas on one Redis (services/runs.py, docs/deploy.md): where the others reach this one, and
    # how long a run's ownership lease lasts without renewal (a killed replica's runs move after this)
    advertise_url: str | None = field(default_factory=lambda: os.environ.get("TIEBREAK_ADVERTISE_URL") or None)
    owner_ttl_s: float = field(default_factory=lambda: float(os.environ.get("TIEBREAK_OWNER_TTL_S") or 10.0))

    def __post_init__(self) -> None:
        if not self.admin_token:
            # no token configured: generate one (printed by `tiebreak serve`), never run open
            self.admin_token = secrets.token_urlsafe(24)
            self.generated_admin_token = True
        else:
            self.generated_admin_token = False
