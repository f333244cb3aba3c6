"""Service errors: each names the offending field and the fix; the app maps them to 4xx (never a 500)."""

from __future__ import annotations


class ServiceError(Exception):
    status_code = 400

    def __init__(self, msg: str, field: str | None = None):
        super().__init__(msg)
        self.msg = msg
        self.field = field

    def detail(self) -> list[dict]:
        loc = ["body", *self.field.split(".")] if self.field else []
        return [{"loc": loc, "msg": self.msg, "type": type(self).__name__}]


class BadInput(ServiceError):
    status_code = 422


class NotFound(ServiceError):
    status_code = 404


class Conflict(ServiceError):
    status_code = 409


class Forbidden(ServiceError):
    status_code = 403


class Unavailable(ServiceError):
    status_code = 503
