"""Experiment errors: members of the service's one error family (services/errors.py), so the app's one
handler answers them (422 / 404 / 409 naming the field) and routes need no handler of their own."""

from __future__ import annotations

from tiebreak.services import errors


class ExperimentError(errors.BadInput, ValueError):
    """Bad input; ``field`` names the offending field (the API answers 4xx with it)."""

    def __init__(self, field: str, message: str, status: int | None = None):
        super().__init__(message, field)
        self.args = (f"{field}: {message}",)
        self.message = message
        if status is not None:
            self.status_code = status

    @property
    def status(self) -> int:
        return self.status_code


class ExperimentConflict(ExperimentError, errors.Conflict):
    """The request repeats something already done (e.g. a checkpoint name already submitted): 409."""
    status_code = 409


class NotFound(ExperimentError, errors.NotFound):
    """No such experiment: 404, located in the path (not the body)."""
    status_code = 404

    def __init__(self, field: str, message: str):
        super().__init__(field, message)
        self.loc = ["path", field]
