"""Helpers for the experiment tests: the real tiebreak app under uvicorn in a thread, a webhook receiver, and a
simulated annotator that labels an experiment's runs over HTTP (GET next / POST labels)."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

from tiebreak.services.runner import AppServer

ADMIN = "admin-token-for-tests"


@contextlib.contextmanager
def serve_app(data_dir, pipeline: str = "off") -> Iterator[tuple[str, object]]:
    """The app of services.app.create_app (embedded Redis under data_dir; judge pipeline off unless
    pipeline="local"/"ray") with the experiments router, on a free port. Yields (base_url, app)."""
    from tiebreak.services.app import ROUTERS, create_app
    from tiebreak.services.settings import Settings
    from tiebreak.services.store import RedisStore

    routers = list(dict.fromkeys([*ROUTERS, "tiebreak.services.api.experiments"]))
    routers = [r for r in routers if _importable(r)]
    store = RedisStore.open(data_dir=data_dir)
    settings = Settings(admin_token=ADMIN, pipeline=pipeline, webhook_backoff_s=0.05,
                        outbound_allow_loopback=True)       # the webhook receiver listens on 127.0.0.1
    app = create_app(store=store, settings=settings, routers=routers)
    try:
        with AppServer(app) as server:
            yield server.url, app
    finally:
        store.close()       # stops the embedded redis-server (saved: a later open of data_dir reads it back)


def _importable(mod: str) -> bool:
    import importlib.util
    return importlib.util.find_spec(mod) is not None


@contextlib.contextmanager
def webhook_receiver() -> Iterator[tuple[str, list]]:
    got: list = []

    class H(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            n = int(self.headers.get("Content-Length", 0))
            got.append(json.loads(self.rfile.read(n)))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *a):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}/hook", got
    finally:
        srv.shutdown()


def label_runs(client: httpx.Client, run_ids: list[str], prefer: Callable[[str, str], str],
               annotator: str = "sim") -> int:
    """Label every pair each run asks for until none asks. ``prefer(left, right)`` -> left|right|tie."""
    n = 0
    for rid in run_ids:
        while True:
            r = client.get(f"/v1/runs/{rid}/next", params={"annotator": annotator})
            if r.status_code == 204:
                break
            r.raise_for_status()
            p = r.json()
            v = prefer(p["left"], p["right"])
            client.post(f"/v1/runs/{rid}/labels", json={"lease_id": p["lease_id"], "pair_id": p["pair_id"],
                                                         "annotator": annotator, "verdict": v}).raise_for_status()
            n += 1
    return n


class BackgroundAnnotator:
    """Labels every run of an experiment as they appear (a thread), until stopped."""

    def __init__(self, base_url: str, experiment: str, prefer: Callable[[str, str], str], token: str = ADMIN):
        self.client = httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
        self.experiment = experiment
        self.prefer = prefer
        self.labels = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._th = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self):
        self._th.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._th.join(10)
        self.client.close()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                rec = self.client.get(f"/v1/experiments/{self.experiment}").json()
                ids = [r["run_id"] for c in rec["checkpoints"] for r in c["runs"].values()]
                self.labels += label_runs(self.client, ids, self.prefer)
            except Exception as e:  # noqa: BLE001 - reported by the test
                self.errors.append(repr(e))
            time.sleep(0.05)
