"""A small HTTP client for the tiebreak API, shared by the `compare`, `report` and `demo` commands.

Errors carry the CLI exit code they map to: 1 (server unreachable, 5xx, unexpected) or 2 (bad input: 4xx).
"""

from __future__ import annotations

from typing import Any

import httpx

from tiebreak.sampler.decision import FINAL_DECISIONS, Decision
from tiebreak.services.settings import ClientSettings

EXIT_OK, EXIT_ERROR, EXIT_BAD_INPUT, EXIT_UNDECIDED = 0, 1, 2, 3
DEFAULT_SERVER = "http://127.0.0.1:8000"
FINAL = FINAL_DECISIONS      # better, worse, equivalent, undecided
DECIDED = FINAL - {Decision.UNDECIDED}


class ApiError(Exception):
    def __init__(self, msg: str, exit_code: int = EXIT_ERROR, status: int | None = None):
        super().__init__(msg)
        self.msg = msg
        self.exit_code = exit_code
        self.status = status


def _detail(r: httpx.Response) -> str:
    try:
        d = r.json().get("detail")
    except ValueError:
        return r.text[:300]
    if isinstance(d, list):
        parts = []
        for e in d:
            loc = ".".join(str(x) for x in e.get("loc", []) if x != "body")
            parts.append(f"{loc}: {e.get('msg')}" if loc else str(e.get("msg")))
        return "; ".join(parts)
    return str(d)


class Client:
    def __init__(self, server: str | None = None, token: str | None = None, timeout: float = 60.0):
        env = ClientSettings()
        self.server = (server or env.server_url or DEFAULT_SERVER).rstrip("/")
        self.token = token if token is not None else env.admin_token
        self.http = httpx.Client(base_url=self.server, timeout=timeout,
                                 headers={"Authorization": f"Bearer {self.token}"} if self.token else {})

    def close(self) -> None:
        self.http.close()

    def request(self, method: str, path: str, *, token: str | None = None, **kw: Any) -> httpx.Response:
        if token is not None:
            kw.setdefault("headers", {})["Authorization"] = f"Bearer {token}"
        try:
            r = self.http.request(method, path, **kw)
        except httpx.HTTPError as e:
            raise ApiError(f"cannot reach the tiebreak server at {self.server} ({type(e).__name__}: {e}); "
                           "start it with `tiebreak serve` or pass --server URL") from e
        if r.status_code in (401, 403):
            raise ApiError(f"{r.status_code} from {self.server}{path}: the token was rejected ({_detail(r)}); "
                           "set TIEBREAK_ADMIN_TOKEN or pass --token", EXIT_BAD_INPUT, r.status_code)
        if 400 <= r.status_code < 500:
            raise ApiError(f"{r.status_code} from {path}: {_detail(r)}", EXIT_BAD_INPUT, r.status_code)
        if r.status_code >= 500:
            raise ApiError(f"{r.status_code} from {path}: {_detail(r)}", EXIT_ERROR, r.status_code)
        return r

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return self.request("GET", path, **kw)

    def post(self, path: str, json: Any = None, **kw: Any) -> httpx.Response:
        return self.request("POST", path, json=json, **kw)

    # ------------------------------------------------------------------------------ the API, by name
    def create_run(self, body: dict) -> str:
        return self.post("/v1/runs", body).json()["run_id"]

    def status(self, run_id: str) -> dict:
        return self.get(f"/v1/runs/{run_id}").json()

    def report_html(self, run_id: str) -> str:
        return self.get(f"/v1/runs/{run_id}/report").text

    def create_annotator(self, name: str, runs: list[str]) -> str:
        return self.post("/v1/annotators", {"name": name, "runs": runs}).json()["token"]

    def next_pair(self, run_id: str, annotator: str, token: str | None = None) -> dict | None:
        r = self.get(f"/v1/runs/{run_id}/next", params={"annotator": annotator}, token=token)
        return None if r.status_code == 204 else r.json()

    def label(self, run_id: str, body: dict, token: str | None = None) -> dict:
        return self.post(f"/v1/runs/{run_id}/labels", body, token=token).json()


def decision_exit_code(decision: str) -> int:
    """0 decided (better/worse/equivalent), 3 undecided at budget; a still-running run is an error (1)."""
    if decision in DECIDED:
        return EXIT_OK
    if decision == Decision.UNDECIDED:
        return EXIT_UNDECIDED
    return EXIT_ERROR
