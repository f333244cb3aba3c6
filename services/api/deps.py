"""Dependencies: the service objects and the caller's identity (Bearer tokens, services/tokens.py).

The app's objects live in one typed ``AppServices`` (``app.state.services``, built by ``create_app``); routes take
them as typed parameters, e.g. ``def route(runs: RunsDep, settings: SettingsDep)``, never through
``request.app.state``.

All are ``async def``: FastAPI runs a plain ``def`` dependency in the threadpool, one thread hop each, which was
most of the per-request cost of the label hot path. A token is resolved once per request: by ``GuardMiddleware``
for requests with a body (before the body is read), else here; lookups are cached (services/tokens.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from tiebreak.services.errors import Forbidden, TooLarge, Unauthorized
from tiebreak.services.metrics import Metrics
from tiebreak.services.runs import RunService
from tiebreak.services.settings import Settings
from tiebreak.services.store import RedisStore
from tiebreak.services.tokens import Principal, TokenRegistry
from tiebreak.services.webhooks import WebhookSender

__all__ = ["AppServices", "MetricsDep", "Principal", "RunsDep", "ServicesDep", "SettingsDep", "StoreDep",
           "TokensDep", "WebhooksDep", "admin", "experiment_access", "get_runs", "get_store", "integration_access",
           "metrics_access", "principal", "run_access", "services_of"]

bearer = HTTPBearer(auto_error=False, description="TIEBREAK_ADMIN_TOKEN or a token from POST /v1/annotators or "
                                                  "POST /v1/tokens")


@dataclass
class AppServices:
    """Everything a route may need, typed (``create_app`` builds it once per app)."""
    settings: Settings
    store: RedisStore
    runs: RunService
    metrics: Metrics
    webhooks: WebhookSender
    tokens: TokenRegistry
    pipeline: Any                 # services.pipeline.Pipeline, or None when the pipeline is off
    # services.experiments.ExperimentService: built on first use (services/api/experiments.py, ExperimentsDep) so
    # that an app whose clients never call /v1/experiments starts no signal watcher; the only field set later
    experiments: Any = None


def services_of(app: FastAPI | Any) -> AppServices:
    return app.state.services


async def get_services(request: Request) -> AppServices:
    return request.app.state.services


async def get_settings(request: Request) -> Settings:
    return request.app.state.services.settings


async def get_store(request: Request) -> RedisStore:
    return request.app.state.services.store


async def get_runs(request: Request) -> RunService:
    return request.app.state.services.runs


async def get_metrics(request: Request) -> Metrics:
    return request.app.state.services.metrics


async def get_webhooks(request: Request) -> WebhookSender:
    return request.app.state.services.webhooks


async def get_tokens(request: Request) -> TokenRegistry:
    return request.app.state.services.tokens


ServicesDep = Annotated[AppServices, Depends(get_services)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[RedisStore, Depends(get_store)]
RunsDep = Annotated[RunService, Depends(get_runs)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
WebhooksDep = Annotated[WebhookSender, Depends(get_webhooks)]
TokensDep = Annotated[TokenRegistry, Depends(get_tokens)]


def unauthorized(msg: str) -> Unauthorized:
    return Unauthorized(msg)


def forbidden(msg: str, loc: list | None = None) -> Forbidden:
    return Forbidden(msg, loc=loc or ["header", "Authorization"], type_="forbidden")


MISSING = "missing token: send 'Authorization: Bearer TOKEN'"


def resolve_header(tokens: TokenRegistry, value: str | None) -> tuple[Principal | None, str]:
    """(principal, "") or (None, why) for an ``Authorization`` header value."""
    if not value:
        return None, MISSING
    scheme, _, cred = value.partition(" ")
    if scheme.lower() != "bearer" or not cred.strip():
        return None, MISSING
    return tokens.resolve(cred.strip())


async def principal(request: Request, tokens: TokensDep,
                    cred: HTTPAuthorizationCredentials | None = Depends(bearer)) -> Principal:
    got = request.scope.get("tiebreak.principal")
    if got is not None:
        return got
    if cred is None or not cred.credentials:
        raise unauthorized(MISSING)
    p, why = tokens.resolve(cred.credentials)
    if p is None:
        raise unauthorized(why)
    return p


async def admin(p: Principal = Depends(principal)) -> Principal:
    if not p.is_admin:
        raise forbidden("this endpoint needs the admin token")
    return p


async def run_access(run_id: str, p: Principal = Depends(principal)) -> Principal:
    """Admin, or an annotator of this run (for `next` and `labels` only)."""
    if not p.may_label(run_id):
        if p.role == "annotator":
            raise forbidden(f"this annotator token is not valid for run {run_id!r}")
        raise forbidden(f"a {p.role} token cannot call this endpoint")
    return p


async def integration_access(p: Principal = Depends(principal)) -> Principal:
    """Admin or an integration token (the route then checks the payload's run against ``p.runs``)."""
    if not (p.is_admin or p.role == "integration"):
        raise forbidden("this endpoint needs the admin token or an integration token (POST /v1/tokens)")
    return p


async def experiment_access(exp: str, p: Principal = Depends(principal)) -> Principal:
    """Admin, or the trainer token of this experiment."""
    if not (p.is_admin or (p.role == "trainer" and p.experiment == exp)):
        raise forbidden(f"this token is not valid for experiment {exp!r}")
    return p


async def metrics_access(request: Request, settings: SettingsDep, tokens: TokensDep) -> None:
    """/metrics: open when ``settings.metrics_public``; otherwise the admin token or a metrics token."""
    if settings.metrics_public:
        return
    p, why = resolve_header(tokens, request.headers.get("authorization"))
    if p is None:
        raise unauthorized(why + " (or start the server with TIEBREAK_METRICS_PUBLIC=1)")
    if not (p.is_admin or p.role == "metrics"):
        raise forbidden("/metrics needs the admin token or a metrics token (POST /v1/tokens, kind 'metrics')")


class GuardMiddleware:
    """Before any route reads a request body: authenticate (401 without reading it) and bound its size (413:
    ``Content-Length`` over ``max_body_bytes`` at once, a chunked body as soon as it passes the limit). Also
    treats a ``/v1`` body sent as curl's default ``application/x-www-form-urlencoded`` as the JSON it is (no
    route takes forms), so ``curl -d '{...}'`` works without ``-H 'Content-Type: application/json'``.

    A plain ASGI middleware (see services/app.py, MeasureMiddleware, for why)."""

    BODY_METHODS = {"POST", "PUT", "PATCH"}

    def __init__(self, app, tokens: TokenRegistry, max_body_bytes: int):
        self.app = app
        self.tokens = tokens
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        path = scope["path"]
        if scope["method"] in self.BODY_METHODS and path.startswith("/v1/"):
            auth = headers.get(b"authorization")
            p, why = resolve_header(self.tokens, auth.decode("latin-1") if auth else None)
            if p is None:
                await _send_error(send, Unauthorized(why))
                return
            # in place: the outer MeasureMiddleware reads the matched route from this same scope dict
            scope["tiebreak.principal"] = p
            ctype = headers.get(b"content-type", b"")
            if ctype.startswith(b"application/x-www-form-urlencoded"):
                scope["headers"] = [(k, v) for k, v in scope["headers"] if k != b"content-type"] + [
                    (b"content-type", b"application/json")]
        limit = self.max_body_bytes
        cl = headers.get(b"content-length")
        if cl is not None:
            try:
                n = int(cl)
            except ValueError:
                n = -1
            if n > limit:
                await _send_error(send, _too_large(limit))
                return
        seen = [0]

        async def limited_receive():
            message = await receive()
            if message["type"] == "http.request":
                seen[0] += len(message.get("body", b""))
                if seen[0] > limit:
                    # as an HTTPException: FastAPI turns any other exception from reading the body into a 400
                    err = _too_large(limit)
                    raise HTTPException(err.status_code, err.detail())
            return message

        await self.app(scope, limited_receive, send)


def _too_large(limit: int) -> TooLarge:
    return TooLarge(f"request body over {limit / 2**20:.0f} MiB (TIEBREAK_MAX_BODY_MB); send the pairs in batches: "
                    "create the run with the first batch, then POST /v1/runs/{id}/pairs for the rest",
                    loc=["body"], type_="too_large")


async def _send_error(send, exc: Unauthorized | TooLarge) -> None:
    """The error body of services/errors.py, sent before any route (and its exception handlers) runs."""
    import json

    body = json.dumps(exc.body()).encode()
    headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (exc.headers or {}).items()]
    await send({"type": "http.response.start", "status": exc.status_code,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close"), *headers]})
    await send({"type": "http.response.body", "body": body})
