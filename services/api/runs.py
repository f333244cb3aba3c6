"""/v1/runs: create runs, add pairs, status, the blind `next` pair, labels, the HTML report."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from fastapi import APIRouter, Depends, Path, Query, Response
from fastapi.responses import HTMLResponse

from tiebreak.services.api.deps import Principal, RunsDep, SettingsDep, admin, run_access
from tiebreak.services.api.models import (
    ErrorOut,
    LabelIn,
    LabelOut,
    NextPair,
    PairsAdd,
    PairsAdded,
    RunCreate,
    RunCreated,
    RunStatus,
    RunSummary,
)
from tiebreak.services.errors import BadInput, Forbidden
from tiebreak.services.outbound import check_request

router = APIRouter(prefix="/v1/runs", tags=["runs"],
                   responses={401: {"model": ErrorOut}, 403: {"model": ErrorOut}, 422: {"model": ErrorOut}})

RunId = Path(..., min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$", description="run id")


@router.post("", response_model=RunCreated, status_code=201, dependencies=[Depends(admin)])
def create_run(body: RunCreate, runs: RunsDep, settings: SettingsDep) -> RunCreated:
    """Create a run from ready pairs (optionally with judge votes) or from models + prompts to generate.
    URLs (`webhook_url`, OpenAI-compatible `base_url`s) must pass the server's outbound policy (422 otherwise)."""
    specs = [(f"judges.{i}", j) for i, j in enumerate(body.judges or [])]
    if body.generate is not None:
        specs += [("generate.base", body.generate.base), ("generate.tuned", body.generate.tuned)]
    check_request(settings, urls=[("webhook_url", body.webhook_url)], specs=specs)
    rid = runs.create_run(body.model_dump())
    pairs = body.pairs if body.pairs is not None else body.generate.prompts if body.generate else []
    if any(p.slices for p in pairs):   # slices that only labelling every pair can decide: said up front
        return RunCreated(run_id=rid, slice_warnings=runs.status(rid).get("slice_warnings") or [])
    return RunCreated(run_id=rid)


@router.get("", response_model=list[RunSummary], dependencies=[Depends(admin)])
def list_runs(runs: RunsDep) -> list[dict]:
    return runs.list_runs()


@router.post("/{run_id}/pairs", response_model=PairsAdded, responses={404: {"model": ErrorOut}},
             dependencies=[Depends(admin)])
def add_pairs(body: PairsAdd, runs: RunsDep, run_id: str = RunId) -> dict:
    """Append pairs (same shape as in POST /v1/runs); after labels exist this starts a new pool version."""
    return runs.add_pairs(run_id, [p.model_dump() for p in body.pairs])


@router.get("/{run_id}", response_model=RunStatus, responses={404: {"model": ErrorOut}},
            dependencies=[Depends(admin)])
def get_run(runs: RunsDep, run_id: str = RunId) -> dict:
    return runs.status(run_id)


# The label round trip (`next` + `labels`) is the hot path: RunService's async entry points make the change on
# the event loop when they can and await its queued write (group commit). Responses are encoded here (the same
# JSON as the response_model, which stays for the OpenAPI schema) instead of validated again by pydantic.

def _json(d: dict) -> Response:
    return Response(json.dumps(d, ensure_ascii=False, separators=(",", ":")).encode(),
                    media_type="application/json")


def _utc_iso(ts: float) -> str:
    """As pydantic serialises an aware UTC datetime: 2026-01-02T03:04:05.123456Z."""
    return datetime.fromtimestamp(ts, tz=UTC).isoformat().replace("+00:00", "Z")


@router.get("/{run_id}/next", response_model=NextPair,
            responses={204: {"description": "nothing to label now (decided, or every pair leased/labelled); with "
                                            "a Retry-After header (seconds): the pair drawn for you is being "
                                            "generated, ask again then"},
                       404: {"model": ErrorOut}})
async def next_pair(runs: RunsDep, run_id: str = RunId,
                    annotator: str | None = Query(None, min_length=1, max_length=200, pattern=r"^[^|]+$",
                                                  description="who labels; defaults to the annotator token's name"),
                    who: Principal = Depends(run_access)) -> Response:
    """Lease one blind pair: prompt and two responses in random order, no model names, no judge votes."""
    name = _annotator(who, annotator, "query")
    got = await runs.next_pair_async(run_id, name)
    if got is None:
        return Response(status_code=204)
    if "lease_id" not in got:       # a generate run: the drawn pair's outputs are still being made
        return Response(status_code=204, headers={"Retry-After": str(max(1, round(got["retry_after"])))})
    got["lease_expires_at"] = _utc_iso(got["lease_expires_at"])
    return _json(got)


@router.post("/{run_id}/labels", response_model=LabelOut, responses={404: {"model": ErrorOut}})
async def post_label(body: LabelIn, runs: RunsDep, settings: SettingsDep, run_id: str = RunId,
                     who: Principal = Depends(run_access)) -> Response:
    """One verdict on one pair, from the holder of its lease (`lease_id` from `next`; without it, the lease this
    annotator holds on the pair). Idempotent per (pair_id, annotator): a repeat is accepted and counted once.
    409 (nothing stored) for a pair not leased to this annotator. `decision` is null for annotator tokens
    unless the server runs with TIEBREAK_ANNOTATORS_SEE_DECISION=1 (a blind study must not show it)."""
    d = body.model_dump()
    d["annotator"] = _annotator(who, body.annotator, "body")
    res = await runs.submit_label_async(run_id, d)
    if not who.is_admin and not settings.annotators_see_decision:
        res = {**res, "decision": None}
    return _json(res)


@router.get("/{run_id}/report", response_class=HTMLResponse, responses={404: {"model": ErrorOut}},
            dependencies=[Depends(admin)])
def report(runs: RunsDep, run_id: str = RunId) -> HTMLResponse:
    """Self-contained HTML report (no external assets)."""
    return HTMLResponse(runs.report_html(run_id))


def _annotator(who: Principal, given: str | None, where: str) -> str:
    """Who labels: the annotator token's own name, or (admin token) the one ``given`` in the query or body."""
    loc = [where, "annotator"]
    if who.is_admin:
        if not given:
            raise BadInput("with the admin token, say who labels: ?annotator=NAME (or 'annotator' in the body)",
                           loc=loc, type_="missing")
        try:
            given.encode("utf-8")
        except UnicodeEncodeError:
            raise BadInput("annotator is not valid Unicode text", loc=loc, type_="value_error") from None
        return given
    if given and given != who.name:
        raise Forbidden(f"this token belongs to annotator {who.name!r}, not {given!r}", loc=loc, type_="forbidden")
    assert who.name is not None
    return who.name
