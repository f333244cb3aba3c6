"""Annotation tools: Label Studio tasks + webhooks, Argilla records + webhooks. The exports need the admin token;
the webhooks accept the admin token or an integration token (POST /v1/tokens, kind "integration") for the runs
it names: configure the tool to send ``Authorization: Bearer <integration token>`` with its webhooks.
Payloads are validated with pydantic models (services/integrations.py): a malformed one gets 422, never 500."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Depends, Query

from tiebreak.services import integrations as ig
from tiebreak.services.api.deps import Principal, RunsDep, admin, integration_access
from tiebreak.services.api.models import ErrorOut
from tiebreak.services.api.runs import RunId
from tiebreak.services.errors import Forbidden
from tiebreak.services.runs import RunService

router = APIRouter(prefix="/v1/integrations", tags=["integrations"],
                   responses={401: {"model": ErrorOut}, 403: {"model": ErrorOut}, 422: {"model": ErrorOut}})

Payload = Body(..., description="the tool's webhook JSON, as documented by the tool")


@router.get("/label-studio/{run_id}/tasks", dependencies=[Depends(admin)])
def label_studio_tasks(runs: RunsDep, run_id: str = RunId, k: int = Query(50, ge=1, le=5000)) -> dict[str, Any]:
    """Tasks to import into Label Studio, with ``predictions[].score`` = the sampler's priority."""
    meta = runs.run_meta(run_id)
    return {"label_config": ig.label_config(meta.get("criteria") or []),
            "tasks": ig.ls_tasks(run_id, runs.draw_batch(run_id, k))}


@router.post("/label-studio/webhook")
def label_studio_webhook(runs: RunsDep, payload: dict[str, Any] = Payload,
                         who: Principal = Depends(integration_access)) -> dict:
    """Ingest ``ANNOTATION_CREATED`` / ``ANNOTATION_UPDATED``; other actions are acknowledged and ignored."""
    got = ig.parse_ls_webhook(payload)
    if got is None:
        return {"accepted": False, "ignored": _ignored(payload.get("action"))}
    return _submit(runs, who, *got)


@router.get("/argilla/{run_id}/records", dependencies=[Depends(admin)])
def argilla_records(runs: RunsDep, run_id: str = RunId, k: int = Query(50, ge=1, le=5000),
                    suggestions: bool = Query(False, description="attach the judges' consensus as suggestions")
                    ) -> dict[str, Any]:
    meta = runs.run_meta(run_id)
    return {"settings": ig.argilla_settings(meta.get("criteria") or [], meta.get("slices") or []),
            "records": ig.argilla_records(run_id, runs.draw_batch(run_id, k), meta["judge_names"], suggestions)}


@router.post("/argilla/webhook")
def argilla_webhook(runs: RunsDep, payload: dict[str, Any] = Payload,
                    who: Principal = Depends(integration_access)) -> dict:
    """Ingest ``response.created`` (submitted responses); other events are acknowledged and ignored."""
    got = ig.parse_argilla_webhook(payload)
    if got is None:
        return {"accepted": False, "ignored": _ignored(payload.get("type"))}
    return _submit(runs, who, *got)


def _ignored(v: Any) -> str | None:
    return v[:100].encode("utf-8", "replace").decode() if isinstance(v, str) else None


def _submit(runs: RunService, who: Principal, run_id: str, label: dict) -> dict:
    if not who.is_admin and run_id not in who.runs:
        raise Forbidden(f"this integration token is not valid for run {run_id!r}", "task.data.run_id")
    return runs.submit_label(run_id, label)
