"""The FastAPI application factory.

    app = create_app(store=RedisStore.open(data_dir="..."), settings=Settings(admin_token="..."))

Routers are listed in ROUTERS — including another resource is a one-line change (e.g. issue 5's
``services.api.experiments``). Business logic lives in plain classes (RunService, RedisStore, Pipeline,
WebhookSender); route functions only translate HTTP.
"""

from __future__ import annotations

import importlib
import logging
import time
from collections.abc import Mapping
from contextlib import asynccontextmanager
from typing import Any

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from tiebreak.services.api.deps import AppServices, GuardMiddleware
from tiebreak.services.errors import ServiceError, error_body, error_item
from tiebreak.services.metrics import Metrics
from tiebreak.services.runs import RunService
from tiebreak.services.settings import Settings
from tiebreak.services.store import RedisStore
from tiebreak.services.tokens import TokenRegistry, admin_token_problem
from tiebreak.services.webhooks import WebhookSender

log = logging.getLogger(__name__)

ROUTERS = [
    "tiebreak.services.api.health",
    "tiebreak.services.api.runs",
    "tiebreak.services.api.annotators",
    "tiebreak.services.api.annotate",
    "tiebreak.services.api.integrations",
    "tiebreak.services.api.experiments",
    "tiebreak.services.api.internal",
]


def create_app(store: RedisStore | None = None, settings: Settings | None = None, *,
               pipeline: Any = None, routers: list[str] | None = None, close_store: bool | None = None) -> FastAPI:
    """``close_store``: close the store (stopping an embedded redis-server it started) at shutdown; default: only
    a store this function opened (one handed in is closed by whoever opened it)."""
    settings = settings or Settings()
    weak = admin_token_problem(settings.admin_token)
    if weak:
        raise WeakAdminToken(f"{weak}: refusing to start. Set a long random one, e.g. "
                             "export TIEBREAK_ADMIN_TOKEN=$(python -c 'import secrets; print(secrets.token_urlsafe(32))')")
    if settings.webhook_url:
        from tiebreak.services.outbound import OutboundPolicy

        why = OutboundPolicy.from_settings(settings).problem(settings.webhook_url)
        if why:
            raise ValueError(f"TIEBREAK_WEBHOOK_URL {why}")
    own_store = store is None if close_store is None else close_store
    store = store or RedisStore.open(settings.redis_url, settings.data_dir)
    metrics = Metrics()
    webhooks = WebhookSender(settings.webhook_retries, settings.webhook_backoff_s, metrics=metrics,
                             default_url=settings.webhook_url, store=store)
    # run.decided events go through the Redis outbox (written with the decision); no in-process notify
    runs = RunService(store, metrics=metrics, lease_ttl_s=settings.lease_ttl_s, webhook_url=settings.webhook_url,
                      url=settings.advertise_url or "", token=settings.admin_token, owner_ttl_s=settings.owner_ttl_s)
    if pipeline is None and settings.pipeline in ("ray", "local"):
        from tiebreak.services.pipeline import Pipeline

        pipeline = Pipeline(runs, mode=settings.pipeline, ray_address=settings.ray_address,
                            batch_size=settings.batch_size, metrics=metrics,
                            max_concurrent=settings.max_pipelines)
    runs.pipeline = pipeline

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if pipeline is not None:
            pipeline.resume_all()       # runs whose generation/judging was interrupted by a restart
        yield
        if services.experiments is not None:
            services.experiments.stop_watcher()   # before the store it reads goes away
        runs.close()                          # release every run: other replicas take them over at once
        webhooks.close()
        if own_store:
            store.close()                     # stops the embedded redis-server it started

    app = FastAPI(title="tiebreak", version="0.1.0", lifespan=lifespan,
                  description="Is the fine-tuned model better than the base model? Judges vote on every pair, "
                              "a few humans label actively chosen pairs, an anytime-valid confidence sequence "
                              "decides. Authorization: Bearer TOKEN (admin: TIEBREAK_ADMIN_TOKEN; annotators: "
                              "POST /v1/annotators).")
    services = AppServices(settings=settings, store=store, runs=runs, metrics=metrics, webhooks=webhooks,
                           tokens=TokenRegistry(store, settings.admin_token), pipeline=pipeline)
    app.state.services = services       # typed: routes take it through services/api/deps.py (RunsDep, ...)
    for name in routers if routers is not None else ROUTERS:
        app.include_router(importlib.import_module(name).router)
    _install_handlers(app, services)
    return app


class WeakAdminToken(ValueError):
    """The admin token is a placeholder or too short (``tiebreak serve`` exits with this message)."""


def error_response(request: Request, exc: Exception) -> JSONResponse:
    """The one exception handler: every error leaves in the shape of services/errors.py."""
    headers: Mapping[str, str] | None = None
    if isinstance(exc, ServiceError):
        status, detail, headers = exc.status_code, exc.detail(), exc.headers
    elif isinstance(exc, RequestValidationError):
        # like FastAPI's own 422, minus the echoed input (which can be megabytes of pairs)
        status = 422
        detail = [error_item(e.get("loc", []), e.get("msg", ""), e.get("type", "")) for e in exc.errors()]
    elif isinstance(exc, StarletteHTTPException):
        # Starlette's own 404 (unknown route) / 405; a route may still raise it with the list already built
        status, headers = exc.status_code, exc.headers
        raw: object = exc.detail
        detail = raw if isinstance(raw, list) else [error_item([], str(raw), _phrase(status))]
    elif isinstance(exc, redis.RedisError):
        log.error("redis error: %s", exc)
        status, headers = 503, {"Retry-After": "1"}
        detail = [error_item([], f"store unavailable ({type(exc).__name__}); nothing was changed, retry",
                             "store_unavailable")]
    else:
        log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        # Starlette re-raises after this answer and uvicorn then drops the connection: tell the client not to
        # reuse it (a keep-alive client would otherwise send its next request into a reset)
        status, headers = 500, {"Connection": "close"}
        detail = [error_item([], f"internal error ({type(exc).__name__}); this is a bug in tiebreak, please "
                                 "report it", "internal_error")]
    return JSONResponse(error_body(detail), status_code=status, headers=headers)


def _install_handlers(app: FastAPI, services: AppServices) -> None:
    for exc_class in (ServiceError, RequestValidationError, StarletteHTTPException, redis.RedisError, Exception):
        app.add_exception_handler(exc_class, error_response)
    app.add_middleware(GuardMiddleware, tokens=services.tokens, max_body_bytes=services.settings.max_body_bytes)
    app.add_middleware(MeasureMiddleware, metrics=services.metrics)


def _phrase(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase.lower().replace(" ", "_")
    except ValueError:
        return "error"


class MeasureMiddleware:
    """Request count and latency per route template. A plain ASGI middleware: Starlette's
    ``BaseHTTPMiddleware`` (``@app.middleware("http")``) wraps every response in a stream and task group,
    which cost ~0.3 ms per request on the label hot path."""

    def __init__(self, app: Any, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = [500]

        async def send_wrapper(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", "unmatched")
            m = self.metrics
            m.latency.labels(path).observe(time.perf_counter() - t0)
            m.requests.labels(path, scope["method"], str(status[0])).inc()
