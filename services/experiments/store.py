"""Where experiments are kept: JSON values under string keys, with a per-key lock for read-modify-writes.

``MemoryKV`` for one process (tests, the replay benchmark); ``RedisKV`` in the service, shared by replicas."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from typing import Any, Protocol


class KV(Protocol):
    def get_json(self, key: str) -> Any | None: ...

    def put_json(self, key: str, value: Any) -> None: ...

    def keys(self, prefix: str) -> list[str]: ...

    def lock(self, key: str) -> Any: ...


class MemoryKV:
    def __init__(self) -> None:
        self._d: dict[str, Any] = {}
        self._lock = threading.Lock()

    def get_json(self, key: str) -> Any | None:
        with self._lock:
            v = self._d.get(key)
        return None if v is None else json.loads(v)

    def put_json(self, key: str, value: Any) -> None:
        v = json.dumps(value)   # the same round trip as Redis: JSON-able values only
        with self._lock:
            self._d[key] = v

    def keys(self, prefix: str) -> list[str]:
        with self._lock:
            return [k for k in self._d if k.startswith(prefix)]

    def lock(self, key: str) -> Any:
        return contextlib.nullcontext()      # one process: ExperimentService's own lock is enough


class LockLost(RuntimeError):
    """A write under ``RedisKV.lock`` found the lock held by someone else (it expired): nothing was written."""


class RedisKV:
    """JSON values in any redis-py client (the service's store passes its client).

    Several API replicas share it: every read-modify-write of an experiment runs under ``lock(key)``, a lock
    in Redis (``{key}:lock``, SET NX PX with a random token, ``LOCK_TTL_S``), and a ``put_json`` made while
    holding it is one Lua script that writes only if the lock still holds our token (a fencing check: a holder
    paused past the TTL cannot overwrite a newer record; it gets LockLost)."""

    LOCK_TTL_S = 120.0
    _PUT_IF = "if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('SET', KEYS[2], ARGV[2]) return 1 end return 0"
    _UNLOCK = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"

    def __init__(self, client: Any, prefix: str = "tb:") -> None:
        self.r = client
        self.prefix = prefix
        self._held = threading.local()

    def get_json(self, key: str) -> Any | None:
        v = self.r.get(self.prefix + key)
        return None if v is None else json.loads(v)

    def put_json(self, key: str, value: Any) -> None:
        token = getattr(self._held, "tokens", {}).get(key)
        if token is None:
            self.r.set(self.prefix + key, json.dumps(value))
        elif not self.r.eval(self._PUT_IF, 2, self.prefix + key + ":lock", self.prefix + key, token,
                             json.dumps(value)):
            raise LockLost(f"the lock on {key} expired while this replica held it; nothing was written")

    def lock(self, key: str) -> Any:
        import secrets

        @contextlib.contextmanager
        def held() -> Any:
            tokens = getattr(self._held, "tokens", None)
            if tokens is None:
                tokens = self._held.tokens = {}
            if key in tokens:            # re-entrant within a thread
                yield
                return
            token = secrets.token_hex(16)
            name = self.prefix + key + ":lock"
            deadline = time.monotonic() + self.LOCK_TTL_S + 10
            while not self.r.set(name, token, nx=True, px=int(self.LOCK_TTL_S * 1000)):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"could not lock {key}")
                time.sleep(0.02)
            tokens[key] = token
            try:
                yield
            finally:
                tokens.pop(key, None)
                self.r.eval(self._UNLOCK, 1, name, token)
        return held()

    def keys(self, prefix: str) -> list[str]:
        n = len(self.prefix)
        return [k[n:] for k in (x.decode() if isinstance(x, bytes) else x
                                for x in self.r.scan_iter(self.prefix + prefix + "*")) if not k.endswith(":lock")]
