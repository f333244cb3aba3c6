"""Vote cache: re-runs and checkpoints never re-judge the same (judge, criterion, prompt, outputs, order).

Any object with ``get(key) -> dict | None`` and ``put(key, value: dict)`` works (the service passes a
Redis-backed one); ``SqliteVoteCache`` is the default file-backed implementation.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from pathlib import Path
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class VoteCache(Protocol):
    def get(self, key: str) -> dict[str, Any] | None: ...

    def put(self, key: str, value: dict[str, Any]) -> None: ...


def vote_key(*parts: str) -> str:
    """Stable key: sha256 over the length-prefixed parts (no ambiguity from separators)."""
    h = hashlib.sha256()
    for p in parts:
        b = p.encode("utf-8")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return "tbvote:" + h.hexdigest()


class MemoryVoteCache:
    def __init__(self) -> None:
        self._d: dict[str, str] = {}
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> dict[str, Any] | None:
        v = self._d.get(key)
        if v is None:
            self.misses += 1
            return None
        self.hits += 1
        return json.loads(v)

    def put(self, key: str, value: dict[str, Any]) -> None:
        self._d[key] = json.dumps(value)

    def __len__(self) -> int:
        return len(self._d)


class SqliteVoteCache:
    """A sqlite3 file (WAL mode, safe across threads of one process and across processes)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self.hits = 0
        self.misses = 0
        with self._conn() as c:
            c.execute("CREATE TABLE IF NOT EXISTS votes (key TEXT PRIMARY KEY, value TEXT NOT NULL)")

    def _conn(self) -> sqlite3.Connection:
        c = getattr(self._local, "conn", None)
        if c is None:
            c = sqlite3.connect(self.path, timeout=30)
            c.execute("PRAGMA journal_mode=WAL")
            self._local.conn = c
        return c

    def get(self, key: str) -> dict[str, Any] | None:
        row = self._conn().execute("SELECT value FROM votes WHERE key = ?", (key,)).fetchone()
        if row is None:
            self.misses += 1
            return None
        self.hits += 1
        return json.loads(row[0])

    def put(self, key: str, value: dict[str, Any]) -> None:
        c = self._conn()
        with c:
            c.execute("INSERT OR REPLACE INTO votes (key, value) VALUES (?, ?)", (key, json.dumps(value)))

    def __len__(self) -> int:
        return int(self._conn().execute("SELECT COUNT(*) FROM votes").fetchone()[0])
