"""The one way the app is run: ``create_app``'s app under uvicorn.

``tiebreak serve`` runs it in the foreground (``AppServer(...).run()``: uvicorn's own signal handling, the app's
shutdown closes the store); the demo and the tests run it in a background thread (``with AppServer(app) as srv:
httpx.get(srv.url + "/healthz")``).
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class AppServer:
    """``app`` under uvicorn on ``host:port`` (port 0: a free one)."""

    def __init__(self, app: Any, *, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
        import uvicorn

        self.app = app
        self.host = host
        self.port = port or free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=self.port, log_level=log_level,
                                                    access_log=False))
        self.thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{host}:{self.port}"

    def run(self) -> None:
        """In the foreground until SIGINT/SIGTERM (uvicorn re-raises the signal after the app's shutdown)."""
        self.server.run()

    def start(self, timeout: float = 60.0) -> AppServer:
        """In a background thread; returns once uvicorn listens (the app's startup has run)."""
        self.thread = threading.Thread(target=self.server.run, name="tiebreak-api", daemon=True)
        self.thread.start()
        t0 = time.monotonic()
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() - t0 > timeout:
                raise RuntimeError(f"the tiebreak app did not start on {self.url}")
            time.sleep(0.02)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Ask uvicorn to exit (the app's shutdown runs) and wait for the thread."""
        self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(timeout)

    def __enter__(self) -> AppServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
