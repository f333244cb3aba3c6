"""Liveness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response

from tiebreak.services.api.deps import MetricsDep, RunsDep, StoreDep, metrics_access
from tiebreak.services.api.models import Health

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
def healthz(store: StoreDep) -> Health:
    return Health(status="ok", redis=store.ping())


@router.get("/metrics", response_class=Response, dependencies=[Depends(metrics_access)])
def metrics(m: MetricsDep, runs: RunsDep) -> Response:
    """Prometheus metrics: the admin token or a metrics token (POST /v1/tokens, kind "metrics") as
    ``Authorization: Bearer``, or no token when the server runs with TIEBREAK_METRICS_PUBLIC=1."""
    m.runs_loaded.set(runs.loaded_count())
    return Response(m.render(), media_type="text/plain; version=0.0.4")
