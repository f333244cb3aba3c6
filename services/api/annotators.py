"""/v1/annotators: the admin creates annotator tokens scoped to runs."""

from __future__ import annotations

import secrets
import time

from fastapi import APIRouter, Depends

from services.api.deps import admin, get_store
from services.api.models import AnnotatorCreate, AnnotatorOut, ErrorOut
from services.errors import NotFound
from services.store import RedisStore

router = APIRouter(prefix="/v1/annotators", tags=["annotators"],
                   responses={401: {"model": ErrorOut}, 403: {"model": ErrorOut}})


@router.post("", response_model=AnnotatorOut, status_code=201, dependencies=[Depends(admin)])
def create_annotator(body: AnnotatorCreate, store: RedisStore = Depends(get_store)) -> AnnotatorOut:
    """A new token for annotator `name`, valid for `next`/`labels` of the listed runs only."""
    for i, rid in enumerate(body.runs):
        if not store.run_exists(rid):
            raise NotFound(f"run {rid!r} does not exist", f"runs.{i}")
    token = "tba_" + secrets.token_urlsafe(24)
    store.add_annotator(token, {"name": body.name, "runs": body.runs, "created_at": time.time()})
    return AnnotatorOut(name=body.name, token=token, runs=body.runs)
