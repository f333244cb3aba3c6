"""/v1/internal: calls one replica forwards to the replica that owns a run (services/runs/ownership.py,
"One owner per run"). Admin token only; not part of the public API (hidden from the OpenAPI schema)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Depends, Path

from tiebreak.services.api.deps import RunsDep, admin
from tiebreak.services.runs import ROUTED

router = APIRouter(prefix="/v1/internal", tags=["internal"], dependencies=[Depends(admin)],
                   include_in_schema=False)


@router.post("/runs/{run_id}/{method}")
def forwarded_call(runs: RunsDep, run_id: str = Path(..., min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$"),
                   method: str = Path(..., pattern="^(" + "|".join(ROUTED) + ")$"),
                   body: dict[str, Any] = Body(...)) -> dict:
    args = body.get("args")
    return {"result": runs.local_call(method, run_id, args if isinstance(args, list) else [])}
