"""Dependencies: the service objects (from app.state) and the caller's identity (Bearer tokens).

All are ``async def``: FastAPI runs a plain ``def`` dependency in the threadpool, one thread hop each, which was
most of the per-request cost of the label hot path. They do no I/O except one Redis HGET for an annotator token
not seen in the last ``TOKEN_CACHE_S`` seconds (tokens are only ever created, so a cached hit stays valid)."""

from __future__ import annotations

import hmac
import time
from dataclasses import dataclass

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from services.runs import RunService
from services.store import RedisStore

bearer = HTTPBearer(auto_error=False, description="TIEBREAK_ADMIN_TOKEN or an annotator token")


@dataclass(frozen=True)
class Principal:
    role: str                 # "admin" | "annotator"
    name: str | None = None   # annotator name
    runs: frozenset[str] = frozenset()

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def may_label(self, run_id: str) -> bool:
        return self.is_admin or run_id in self.runs


TOKEN_CACHE_S = 60.0
_ADMIN = Principal("admin")


async def get_store(request: Request) -> RedisStore:
    return request.app.state.store


async def get_runs(request: Request) -> RunService:
    return request.app.state.runs


async def principal(request: Request, cred: HTTPAuthorizationCredentials | None = Depends(bearer)) -> Principal:
    if cred is None or not cred.credentials:
        raise HTTPException(401, "missing token: send 'Authorization: Bearer TOKEN'",
                            headers={"WWW-Authenticate": "Bearer"})
    token = cred.credentials
    state = request.app.state
    if hmac.compare_digest(token.encode(), state.settings.admin_token.encode()):
        return _ADMIN
    cache: dict[str, tuple[float, Principal]] | None = getattr(state, "token_cache", None)
    if cache is None:
        cache = state.token_cache = {}
    now = time.monotonic()
    hit = cache.get(token)
    if hit is not None and hit[0] > now:
        return hit[1]
    rec = state.store.get_annotator(token)
    if rec is None:
        raise HTTPException(401, "unknown token", headers={"WWW-Authenticate": "Bearer"})
    p = Principal("annotator", rec["name"], frozenset(rec["runs"]))
    if len(cache) > 10_000:
        cache.clear()
    cache[token] = (now + TOKEN_CACHE_S, p)
    return p


async def admin(p: Principal = Depends(principal)) -> Principal:
    if not p.is_admin:
        raise HTTPException(403, "this endpoint needs the admin token")
    return p


async def run_access(run_id: str, p: Principal = Depends(principal)) -> Principal:
    """Admin, or an annotator of this run (for `next` and `labels` only)."""
    if not p.may_label(run_id):
        raise HTTPException(403, f"this annotator token is not valid for run {run_id!r}")
    return p
