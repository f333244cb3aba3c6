"""Dependencies: the service objects (from app.state) and the caller's identity (Bearer tokens)."""

from __future__ import annotations

import hmac
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


def get_store(request: Request) -> RedisStore:
    return request.app.state.store


def get_runs(request: Request) -> RunService:
    return request.app.state.runs


def principal(request: Request, cred: HTTPAuthorizationCredentials | None = Depends(bearer)) -> Principal:
    if cred is None or not cred.credentials:
        raise HTTPException(401, "missing token: send 'Authorization: Bearer TOKEN'",
                            headers={"WWW-Authenticate": "Bearer"})
    token = cred.credentials
    if hmac.compare_digest(token.encode(), request.app.state.settings.admin_token.encode()):
        return Principal("admin")
    rec = request.app.state.store.get_annotator(token)
    if rec is None:
        raise HTTPException(401, "unknown token", headers={"WWW-Authenticate": "Bearer"})
    return Principal("annotator", rec["name"], frozenset(rec["runs"]))


def admin(p: Principal = Depends(principal)) -> Principal:
    if not p.is_admin:
        raise HTTPException(403, "this endpoint needs the admin token")
    return p


def run_access(run_id: str, p: Principal = Depends(principal)) -> Principal:
    """Admin, or an annotator of this run (for `next` and `labels` only)."""
    if not p.may_label(run_id):
        raise HTTPException(403, f"this annotator token is not valid for run {run_id!r}")
    return p
