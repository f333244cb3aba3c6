"""Annotation tools: Label Studio tasks + webhooks, Argilla records + webhooks (admin token; configure the tool
to send ``Authorization: Bearer TIEBREAK_ADMIN_TOKEN`` with its webhooks)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Depends, Query

from services import integrations as ig
from services.api.deps import admin, get_runs
from services.api.models import ErrorOut
from services.api.runs import RunId
from services.errors import BadInput
from services.runs import RunService

router = APIRouter(prefix="/v1/integrations", tags=["integrations"], dependencies=[Depends(admin)],
                   responses={401: {"model": ErrorOut}, 403: {"model": ErrorOut}, 422: {"model": ErrorOut}})

Payload = Body(..., description="the tool's webhook JSON, as documented by the tool")


@router.get("/label-studio/{run_id}/tasks")
def label_studio_tasks(run_id: str = RunId, k: int = Query(50, ge=1, le=5000),
                       runs: RunService = Depends(get_runs)) -> dict[str, Any]:
    """Tasks to import into Label Studio, with ``predictions[].score`` = the sampler's priority."""
    meta = runs.run_meta(run_id)
    return {"label_config": ig.label_config(meta.get("criteria") or []),
            "tasks": ig.ls_tasks(run_id, runs.draw_batch(run_id, k))}


@router.post("/label-studio/webhook")
def label_studio_webhook(payload: dict[str, Any] = Payload, runs: RunService = Depends(get_runs)) -> dict:
    """Ingest ``ANNOTATION_CREATED`` / ``ANNOTATION_UPDATED``; other actions are acknowledged and ignored."""
    got = ig.parse_ls_webhook(payload)
    if got is None:
        return {"accepted": False, "ignored": payload.get("action")}
    return runs.submit_label(*got)


@router.get("/argilla/{run_id}/records")
def argilla_records(run_id: str = RunId, k: int = Query(50, ge=1, le=5000),
                    suggestions: bool = Query(False, description="attach the judges' consensus as suggestions"),
                    runs: RunService = Depends(get_runs)) -> dict[str, Any]:
    meta = runs.run_meta(run_id)
    return {"settings": ig.argilla_settings(meta.get("criteria") or []),
            "records": ig.argilla_records(run_id, runs.draw_batch(run_id, k), meta["judge_names"], suggestions)}


@router.post("/argilla/webhook")
def argilla_webhook(payload: dict[str, Any] = Payload, runs: RunService = Depends(get_runs)) -> dict:
    """Ingest ``response.created`` (submitted responses); other events are acknowledged and ignored."""
    if not isinstance(payload, dict):
        raise BadInput("expected a JSON object", "body")
    got = ig.parse_argilla_webhook(payload)
    if got is None:
        return {"accepted": False, "ignored": payload.get("type")}
    return runs.submit_label(*got)
