"""The service's one error model: every 4xx/5xx body is

    {"detail": [{"loc": [...], "msg": "...", "type": "..."}]}

(FastAPI's own 422 shape, so a client that reads ``detail`` reads every error the same way; docs/api.md,
"Errors"). Each error names the offending field (``loc``) and the fix (``msg``). Code raises a ``ServiceError``
subclass; ``services/app.py`` has the one handler that turns it (and FastAPI's validation errors, Starlette's
404/405, a Redis outage) into that body, and ``GuardMiddleware`` (services/api/deps.py), which answers before any
route runs, sends the same body through :func:`error_body`.
"""

from __future__ import annotations

from typing import Any


def error_item(loc: list | tuple, msg: str, type_: str) -> dict[str, Any]:
    return {"loc": list(loc), "msg": msg, "type": type_}


def error_body(detail: list[dict[str, Any]]) -> dict[str, Any]:
    return {"detail": detail}


class ServiceError(Exception):
    """Base of every error the service answers with a 4xx/5xx.

    ``field``: a dotted body field ("judges.0.model" -> loc ["body", "judges", "0", "model"]); ``loc``: the
    whole location instead (e.g. ["path", "run_id"], ["header", "Authorization"]); ``type_``: the machine-readable
    kind (default: the class name); ``headers``: sent with the response (e.g. Retry-After)."""

    status_code = 400

    def __init__(self, msg: str, field: str | None = None, *, loc: list | None = None, type_: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(msg)
        self.msg = msg
        self.field = field
        self.loc = loc
        self.type_ = type_
        self.headers = headers

    def detail(self) -> list[dict[str, Any]]:
        if self.loc is not None:
            loc = list(self.loc)
        else:
            loc = ["body", *self.field.split(".")] if self.field else []
        return [error_item(loc, self.msg, self.type_ or type(self).__name__)]

    def body(self) -> dict[str, Any]:
        return error_body(self.detail())


class BadInput(ServiceError):
    status_code = 422


class Unauthorized(ServiceError):
    """No or an unknown ``Authorization: Bearer`` token."""

    status_code = 401

    def __init__(self, msg: str):
        super().__init__(msg, loc=["header", "Authorization"], type_="unauthorized",
                         headers={"WWW-Authenticate": "Bearer"})


class Forbidden(ServiceError):
    status_code = 403


class NotFound(ServiceError):
    status_code = 404


class Conflict(ServiceError):
    status_code = 409


class TooLarge(ServiceError):
    status_code = 413


class Unavailable(ServiceError):
    status_code = 503
