"""Bearer tokens other than the admin token: annotators, annotation-tool integrations, trainers, metrics scrapers.

Stored in Redis under ``tb:annotators`` (hash sha256(token) -> JSON record; the token itself is never stored):

    {"id", "kind", "name", "runs", "experiment", "created_at", "expires_at"}

* ``annotator``   — ``next``/``labels`` of ``runs`` (POST /v1/annotators). Names are unique among live
  annotator tokens (``tb:annotator_names`` name -> token id), so one name is one person.
* ``integration`` — the Label Studio / Argilla webhook routes, for labels of ``runs`` only.
* ``trainer``     — the routes of one experiment (``/v1/experiments/{experiment}/...``): checkpoints, signal.
* ``metrics``     — ``GET /metrics`` only (for Prometheus' ``authorization`` / ``bearer_token_file``).

A token's id is the first 16 hex digits of its sha256 (listing and revocation use it; it does not reveal the
token). Records from before kinds existed read as annotator tokens. Lookups are cached for ``CACHE_S`` seconds
per process, so a revoked or expired token stops working within that time on every replica (at once on the
replica that revoked it).
"""

from __future__ import annotations

import hmac
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

from tiebreak.services.errors import Conflict, NotFound
from tiebreak.services.store import PREFIX, token_hash

KINDS = ("annotator", "integration", "trainer", "metrics")
CACHE_S = 5.0
PREFIXES = {"annotator": "tba_", "integration": "tbi_", "trainer": "tbt_", "metrics": "tbm_"}
WEAK_ADMIN_TOKENS = {"change-me", "changeme", "change_me", "admin", "password", "secret", "token", "test",
                     "admin-token", "your-token", "replace-me", "xxx"}
MIN_ADMIN_TOKEN_LEN = 16


@dataclass(frozen=True)
class Principal:
    role: str                      # "admin" | one of KINDS
    name: str | None = None
    runs: frozenset[str] = frozenset()
    experiment: str | None = None
    token_id: str | None = None

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def may_label(self, run_id: str) -> bool:
        return self.is_admin or (self.role == "annotator" and run_id in self.runs)


ADMIN = Principal("admin")


def admin_token_problem(token: str) -> str | None:
    """Why ``token`` is too weak to be the admin token (None if it is acceptable)."""
    if token.strip().lower() in WEAK_ADMIN_TOKENS:
        return f"TIEBREAK_ADMIN_TOKEN is the placeholder {token!r}"
    if len(token) < MIN_ADMIN_TOKEN_LEN:
        return f"TIEBREAK_ADMIN_TOKEN is {len(token)} characters long; use at least {MIN_ADMIN_TOKEN_LEN}"
    if len(set(token)) < 4:
        return "TIEBREAK_ADMIN_TOKEN repeats too few characters"
    return None


def token_id(token: str) -> str:
    return token_hash(token)[:16]


class TokenRegistry:
    """Create, resolve, list and revoke tokens (see the module docstring)."""

    def __init__(self, store: Any, admin_token: str):
        self.r = store.r
        self.admin_token = admin_token
        self.key = f"{PREFIX}annotators"
        self.names = f"{PREFIX}annotator_names"
        self._cache: dict[str, tuple[float, Principal | None, float | None]] = {}

    # ------------------------------------------------------------------------------------ resolving
    def resolve(self, token: str, now: float | None = None) -> tuple[Principal | None, str]:
        """(principal, "") for a valid token, else (None, why)."""
        if hmac.compare_digest(token.encode(), self.admin_token.encode()):
            return ADMIN, ""
        now = time.time() if now is None else now
        mono = time.monotonic()
        hit = self._cache.get(token)
        if hit is not None and hit[0] > mono:
            p, expires = hit[1], hit[2]
        else:
            rec = self._get(token_hash(token))
            p = _principal(rec) if rec is not None else None
            expires = rec.get("expires_at") if rec is not None else None
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[token] = (mono + CACHE_S, p, expires)
        if p is None:
            return None, "unknown token"
        if expires is not None and expires <= now:
            return None, "this token expired; ask the admin for a new one"
        return p, ""

    def _get(self, h: str) -> dict | None:
        s = self.r.hget(self.key, h)
        return json.loads(s) if s else None

    # ------------------------------------------------------------------------------------ managing
    def create(self, kind: str, *, name: str, runs: list[str] | None = None, experiment: str | None = None,
               expires_in_s: float | None = None) -> tuple[str, dict]:
        assert kind in KINDS
        token = PREFIXES[kind] + secrets.token_urlsafe(24)
        now = time.time()
        tid = token_id(token)
        rec = {"id": tid, "kind": kind, "name": name, "runs": list(runs or []), "experiment": experiment,
               "created_at": now, "expires_at": now + expires_in_s if expires_in_s else None}
        if kind == "annotator":
            self._claim_name(name, tid, now)
        self.r.hset(self.key, token_hash(token), json.dumps(rec))
        return token, rec

    def _claim_name(self, name: str, tid: str, now: float) -> None:
        if self.r.hsetnx(self.names, name, tid):
            return
        holder = self.r.hget(self.names, name)
        rec = self._find(holder) if holder else None
        if rec is not None and (rec.get("expires_at") is None or rec["expires_at"] > now):
            raise Conflict(f"annotator name {name!r} is taken (token {rec['id']}); one name is one person: pick "
                           f"another name, or revoke that token first (DELETE /v1/tokens/{rec['id']})", "name")
        self.r.hset(self.names, name, tid)     # the old holder was revoked or expired

    def _find(self, tid: str) -> dict | None:
        for h, s in self.r.hscan_iter(self.key, count=1000):
            if h.startswith(tid):
                rec = json.loads(s)
                rec.setdefault("id", h[:16])
                return rec
        return None

    def list(self, kind: str | None = None) -> list[dict]:
        out = []
        for h, s in self.r.hscan_iter(self.key, count=1000):
            rec = json.loads(s)
            rec.setdefault("id", h[:16])
            rec.setdefault("kind", "annotator")
            rec.setdefault("expires_at", None)
            rec.setdefault("experiment", None)
            if kind is None or rec["kind"] == kind:
                out.append(rec)
        return sorted(out, key=lambda r: r.get("created_at") or 0)

    def revoke(self, tid: str) -> dict:
        for h, s in self.r.hscan_iter(self.key, count=1000):
            if h.startswith(tid) and len(tid) >= 8:
                rec = json.loads(s)
                self.r.hdel(self.key, h)
                if rec.get("kind", "annotator") == "annotator" and self.r.hget(self.names, rec["name"]) in (
                        tid, h[:16]):
                    self.r.hdel(self.names, rec["name"])
                self._cache.clear()
                rec.setdefault("id", h[:16])
                return rec
        raise NotFound(f"no token with id {tid!r} (GET /v1/tokens lists them)", "token_id")


def _principal(rec: dict) -> Principal:
    kind = rec.get("kind", "annotator")
    return Principal(kind, rec.get("name"), frozenset(rec.get("runs") or []), rec.get("experiment"),
                     rec.get("id"))
