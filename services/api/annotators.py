"""/v1/annotators and /v1/tokens: the admin creates, lists and revokes tokens (services/tokens.py).

    POST   /v1/annotators            {name, runs, expires_in_s?} -> {name, token, runs, token_id, expires_at}
    GET    /v1/annotators            annotator tokens (never the tokens themselves)
    DELETE /v1/annotators/{token_id} revoke
    POST   /v1/tokens                {kind: integration|trainer|metrics|annotator, name, runs?, experiment?,
                                      expires_in_s?} -> {token_id, token, ...}
    GET    /v1/tokens                every non-admin token;  DELETE /v1/tokens/{token_id}  revoke
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Response

from tiebreak.services.api.deps import ServicesDep, StoreDep, TokensDep, admin
from tiebreak.services.api.models import (
    AnnotatorCreate,
    AnnotatorOut,
    ErrorOut,
    TokenCreate,
    TokenInfo,
    TokenOut,
)
from tiebreak.services.errors import BadInput, NotFound
from tiebreak.services.store import RedisStore

router = APIRouter(tags=["tokens"], dependencies=[Depends(admin)],
                   responses={401: {"model": ErrorOut}, 403: {"model": ErrorOut}})


def _check_runs(store: RedisStore, runs: list[str]) -> None:
    for i, rid in enumerate(runs):
        if not store.run_exists(rid):
            raise NotFound(f"run {rid!r} does not exist", f"runs.{i}")


@router.post("/v1/annotators", response_model=AnnotatorOut, status_code=201, responses={409: {"model": ErrorOut}})
def create_annotator(body: AnnotatorCreate, store: StoreDep, tokens: TokensDep) -> AnnotatorOut:
    """A new token for annotator `name` (unique among live annotator tokens), valid for `next`/`labels` of the
    listed runs only, until `expires_in_s` seconds from now (default: until revoked)."""
    _check_runs(store, body.runs)
    token, rec = tokens.create("annotator", name=body.name, runs=body.runs, expires_in_s=body.expires_in_s)
    return AnnotatorOut(name=body.name, token=token, runs=body.runs, token_id=rec["id"],
                        expires_at=rec["expires_at"])


@router.get("/v1/annotators", response_model=list[TokenInfo])
def list_annotators(tokens: TokensDep) -> list[dict[str, Any]]:
    return tokens.list("annotator")


@router.delete("/v1/annotators/{token_id}", status_code=204, responses={404: {"model": ErrorOut}})
def revoke_annotator(token_id: str, tokens: TokensDep) -> Response:
    tokens.revoke(token_id)
    return Response(status_code=204)


@router.post("/v1/tokens", response_model=TokenOut, status_code=201, responses={409: {"model": ErrorOut}})
def create_token(body: TokenCreate, services: ServicesDep) -> dict[str, Any]:
    """A scoped token: `integration` (the Label Studio / Argilla webhooks, for labels of `runs`), `trainer` (the
    routes of one `experiment`), `metrics` (GET /metrics) or `annotator` (as POST /v1/annotators)."""
    if body.kind in ("integration", "annotator"):
        if not body.runs:
            raise BadInput(f"a {body.kind} token needs 'runs' (the run ids it may label)", "runs")
        _check_runs(services.store, body.runs)
    if body.kind == "trainer":
        if not body.experiment:
            raise BadInput("a trainer token needs 'experiment' (the id POST /v1/experiments returned)", "experiment")
        from tiebreak.services.api.experiments import experiment_service

        if _experiment_missing(experiment_service(services), body.experiment):
            raise NotFound(f"experiment {body.experiment!r} does not exist", "experiment")
    token, rec = services.tokens.create(body.kind, name=body.name, runs=body.runs, experiment=body.experiment,
                                        expires_in_s=body.expires_in_s)
    return {**rec, "token_id": rec["id"], "token": token}


def _experiment_missing(svc: Any, exp: str) -> bool:
    try:
        svc.get(exp)
    except NotFound:        # ExperimentService.get raises services.experiments.errors.NotFound, one of these
        return True
    return False


@router.get("/v1/tokens", response_model=list[TokenInfo])
def list_tokens(tokens: TokensDep,
                kind: str | None = Query(None, pattern="^(annotator|integration|trainer|metrics)$")
                ) -> list[dict[str, Any]]:
    return tokens.list(kind)


@router.delete("/v1/tokens/{token_id}", status_code=204, responses={404: {"model": ErrorOut}})
def revoke_token(token_id: str, tokens: TokensDep) -> Response:
    tokens.revoke(token_id)
    return Response(status_code=204)
