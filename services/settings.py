"""Every setting read from the environment, in one place (pydantic-settings): the only reader of ``os.environ`` in
services/. docs/deploy.md ("Security") lists the variables.

``Settings``: the server (``tiebreak serve``, ``create_app``). Keyword arguments win over the environment, which
wins over the defaults: ``Settings(admin_token="...")`` in a test ignores ``TIEBREAK_ADMIN_TOKEN``. An empty
variable counts as unset. ``ClientSettings``: the CLI commands that talk to a server (``compare``, ``watch``,
``report``, ...) and ``judge-eval``.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Annotated, Any

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_DATA_DIR = "~/.local/share/tiebreak"


def _env(*names: str) -> Any:
    """The variable names a field is read from (first set wins)."""
    return AliasChoices(*names)


class _EnvSettings(BaseSettings):
    # populate_by_name: Settings(admin_token=...) by field name; the environment only by the variable names
    model_config = SettingsConfigDict(populate_by_name=True, env_ignore_empty=True, extra="ignore",
                                      case_sensitive=True)


class StoreSettings(_EnvSettings):
    """What services/store.py reads: where the embedded Redis keeps its files, and its AOF fsync policy."""

    data_dir: str | None = Field(default=None, validation_alias=_env("TIEBREAK_DATA_DIR"))
    appendfsync: str | None = Field(default=None, validation_alias=_env("TIEBREAK_APPENDFSYNC"))   # always | everysec

    def resolved_data_dir(self) -> Path:
        """Where the embedded Redis keeps its files: ``data_dir``, else ~/.local/share/tiebreak."""
        return Path(self.data_dir or DEFAULT_DATA_DIR).expanduser()


class Settings(StoreSettings):
    admin_token: str = Field(default="", validation_alias=_env("TIEBREAK_ADMIN_TOKEN"))
    redis_url: str | None = Field(default=None, validation_alias=_env("REDIS_URL"))
    lease_ttl_s: float = 600.0
    pipeline: str = "ray"                  # "ray" | "local" | "off"
    ray_address: str | None = Field(default=None, validation_alias=_env("RAY_ADDRESS"))
    batch_size: int = 4
    max_pipelines: int = Field(default=2, validation_alias=_env("TIEBREAK_MAX_PIPELINES"))
    webhook_url: str | None = Field(default=None, validation_alias=_env("TIEBREAK_WEBHOOK_URL"))
    webhook_retries: int = 5
    webhook_backoff_s: float = 0.5
    public_url: str | None = None          # for links in exported tasks (Label Studio / Argilla)
    # several replicas on one Redis (services/runs/ownership.py, docs/deploy.md): where the others reach this one, and
    # how long a run's ownership lease lasts without renewal (a killed replica's runs move after this)
    advertise_url: str | None = Field(default=None, validation_alias=_env("TIEBREAK_ADVERTISE_URL"))
    owner_ttl_s: float = Field(default=10.0, validation_alias=_env("TIEBREAK_OWNER_TTL_S"))
    # request bodies above this get 413 before they are read (a 10,000-pair run with ~1 KB texts is ~30 MB);
    # bigger runs: POST /v1/runs/{id}/pairs in batches. Set in MiB (TIEBREAK_MAX_BODY_MB) or bytes.
    max_body_mb: float = Field(default=32.0, gt=0, validation_alias=_env("TIEBREAK_MAX_BODY_MB"))
    max_body_bytes: int = 0                # 0: from max_body_mb
    # GET /metrics without a token (e.g. scraped only from inside the cluster); else admin or a metrics token
    metrics_public: bool = Field(default=False, validation_alias=_env("TIEBREAK_METRICS_PUBLIC"))
    # label responses tell annotator tokens the run's decision (a blinding leak in a study: off by default)
    annotators_see_decision: bool = Field(default=False, validation_alias=_env("TIEBREAK_ANNOTATORS_SEE_DECISION"))
    # outbound requests (judge/generator base_url, webhook_url): see services/outbound.py
    outbound_allow: Annotated[list[str], NoDecode] = Field(default_factory=list,
                                                           validation_alias=_env("TIEBREAK_OUTBOUND_ALLOW"))
    outbound_allow_loopback: bool = Field(default=False, validation_alias=_env("TIEBREAK_OUTBOUND_ALLOW_LOOPBACK"))
    outbound_allow_link_local: bool = Field(default=False, validation_alias=_env("TIEBREAK_OUTBOUND_ALLOW_LINK_LOCAL"))
    # how often the experiment watcher re-evaluates the stop signal of running experiments (services/experiments.py)
    signal_interval_s: float = Field(default=2.0, gt=0, validation_alias=_env("TIEBREAK_SIGNAL_INTERVAL_S"))
    # True when no admin token was configured and one was generated (``tiebreak serve`` prints it)
    generated_admin_token: bool = Field(default=False, exclude=True)

    @field_validator("outbound_allow", mode="before")
    @classmethod
    def _comma_list(cls, v: Any) -> Any:
        """TIEBREAK_OUTBOUND_ALLOW is comma-separated (``api.openai.com,*.example.com``)."""
        if isinstance(v, str):
            return [x.strip() for x in v.split(",") if x.strip()]
        return v

    @model_validator(mode="after")
    def _derived(self) -> Settings:
        if not self.max_body_bytes:
            self.max_body_bytes = int(self.max_body_mb * 2**20)
        if not self.admin_token:
            # no token configured: generate one (printed by `tiebreak serve`), never run open
            self.admin_token = secrets.token_urlsafe(24)
            self.generated_admin_token = True
        return self


class ClientSettings(_EnvSettings):
    """The CLI's view of the environment: which server, with which token."""

    server_url: str | None = Field(default=None, validation_alias=_env("TIEBREAK_URL", "TIEBREAK_SERVER"))
    admin_token: str = Field(default="", validation_alias=_env("TIEBREAK_ADMIN_TOKEN"))
    token: str | None = Field(default=None, validation_alias=_env("TIEBREAK_TOKEN"))      # e.g. a trainer token
    vote_cache: str = Field(default="~/.cache/tiebreak/votes.sqlite", validation_alias=_env("TIEBREAK_VOTE_CACHE"))


def ray_env_defaults() -> None:
    """Environment for a local Ray started by this process (Ray reads it, not us): no token auth on a
    single-machine cluster unless the user configured it."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
