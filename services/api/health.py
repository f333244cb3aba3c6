"""Liveness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response

from services.api.deps import get_store, metrics_access
from services.api.models import Health
from services.store import RedisStore

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
def healthz(store: RedisStore = Depends(get_store)) -> Health:
    return Health(status="ok", redis=store.ping())


@router.get("/metrics", response_class=Response, dependencies=[Depends(metrics_access)])
def metrics(request: Request) -> Response:
    """Prometheus metrics: the admin token or a metrics token (POST /v1/tokens, kind "metrics") as
    ``Authorization: Bearer``, or no token when the server runs with TIEBREAK_METRICS_PUBLIC=1."""
    m = request.app.state.metrics
    m.runs_loaded.set(request.app.state.runs.loaded_count())
    return Response(m.render(), media_type="text/plain; version=0.0.4")
