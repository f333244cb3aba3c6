"""One owner per run: which replica serves a run, and the runs this replica holds in memory.

Owns the ownership lease of every run in memory (``tb:run:{rid}:owner`` through ``RedisStore``), the table of
loaded runs, the keeper thread, idle/LRU eviction, and routing a call to the replica that owns its run.

A replica serves a run only while it holds the run's ownership lease in Redis (SET with PX ``owner_ttl_s``,
renewed every third of it by the keeper thread; value "{fence} {replica id} {advertised url}", the fence
INCR'd on every new owner). Every write of the run is one script that checks that value and the run's write
sequence number (``RedisStore.apply``): a replica that lost the lease (paused, partitioned) can never write
again, a copy that missed a write can never write, and a write re-sent by redis-py's retry is applied once. The
copy is then dropped and the call answered 503 (retry).

``route`` runs a call here (``local(method)(rt, *args)``) if we own the run (taking the lease when nobody
holds it, loading the run from Redis), else forwards it over HTTP to the owner's advertised URL (``POST
/v1/internal/runs/{rid}/{method}``, admin token). When the owner does not answer the connection (killed), we
wait for its lease to expire (at most ``owner_ttl_s``) and take the run over from Redis. A lease held by an
earlier incarnation of this very address (same URL, other replica id: we restarted) is taken over at once.
Runs idle for ``idle_evict_s`` are written, released and dropped from memory (and at most ``max_runs`` are
kept, least recently used first).

Apart from the run's changes because none of this depends on what a run is: a run here is a ``RunRuntime``
with a lock, an owner value and a write tail.
"""

from __future__ import annotations

import inspect
import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from tiebreak.services.errors import BadInput, NotFound, Unavailable
from tiebreak.services.runs.model import NotOwner, OwnershipLost, RemoteError, RunRuntime
from tiebreak.services.runs.writer import RunWriter
from tiebreak.services.store import RedisStore

log = logging.getLogger(__name__)

# run id, owner value -> the run loaded from Redis, and the ids of expired leases to delete from Redis
Loader = Callable[[str, str], tuple[RunRuntime, list[str]]]


class Ownership:
    def __init__(self, store: RedisStore, writer: RunWriter, load: Loader, *,
                 local: Callable[[str], Callable[..., Any]], on_loaded: Callable[[RunRuntime], None],
                 url: str = "", token: str = "", owner_ttl_s: float = 10.0, idle_evict_s: float = 1800.0,
                 max_runs: int = 1000):
        self.store = store
        self.writer = writer
        self.load = load
        self.local = local                  # method name -> the owner's implementation (rt, *args)
        self.on_loaded = on_loaded          # called once a run is loaded here (e.g. resume its pipeline)
        self.replica = uuid.uuid4().hex[:12]
        self.url = url.rstrip("/")           # where other replicas reach this one ("" = in-process only)
        self.token = token                   # the admin token, sent with forwarded calls
        self.owner_ttl_s = owner_ttl_s
        self.idle_evict_s = idle_evict_s
        self.max_runs = max_runs
        self._runs: dict[str, RunRuntime] = {}
        self._lock = threading.Lock()
        self._http: Any = None
        self._stop = threading.Event()
        self._keeper: threading.Thread | None = None

    def loaded_count(self) -> int:
        """How many runs this replica holds in memory now."""
        return len(self._runs)

    def runtime(self, rid: str, *, wait_s: float = 0.0) -> RunRuntime:
        """The run, owned and in memory here: loaded from Redis after taking its ownership lease when nobody
        holds it. Raises NotOwner when another live replica holds it (after waiting up to ``wait_s`` for the
        lease to be free), NotFound when there is no such run."""
        rt = self._runs.get(rid)
        if rt is not None and self._still_owned(rt):
            rt.last_used = time.monotonic()
            return rt
        deadline = time.monotonic() + wait_s
        while True:
            with self._lock:
                rt = self._runs.get(rid)
                if rt is not None and self._still_owned(rt):
                    return rt
                if not self.store.run_exists(rid):
                    raise NotFound(f"run {rid!r} does not exist", "run_id")
                value = self._acquire(rid)
                if value is not None:
                    rt, expired = self.load(rid, value)
                    rt.owner = value
                    rt.owned_until = time.monotonic() + 0.8 * self.owner_ttl_s
                    self._runs[rid] = rt
                    if expired:
                        self.writer.enqueue(rt, release=expired)
                    self._start_keeper()
                    break
            if time.monotonic() >= deadline:
                raise NotOwner(rid, self.store.owner_of(rid) or "")
            time.sleep(min(0.2, self.owner_ttl_s / 10))
        self.on_loaded(rt)
        self._evict_lru()
        return rt

    def _acquire(self, rid: str) -> str | None:
        """Our ownership lease value when we hold the run's lease now (taken if free, or if held by an earlier
        incarnation of our own address), else None."""
        ttl_ms = int(self.owner_ttl_s * 1000)
        mine = f" {self.replica} {self.url}"
        v = self.store.acquire_owner(rid, self.replica, self.url, ttl_ms)
        if not v.endswith(mine):
            _, other, url = (v.split(" ", 2) + ["", ""])[:3]
            if url != self.url or other == self.replica:
                return None
            v = self.store.acquire_owner(rid, self.replica, self.url, ttl_ms, replace=v)
            if not v.endswith(mine):
                return None
        return v

    def _still_owned(self, rt: RunRuntime) -> bool:
        """True while our lease surely holds (renewed less than ~owner_ttl_s ago); re-checked in Redis when
        the keeper thread is late. A copy whose lease is gone is dropped."""
        if rt.broken is not None:
            return False
        if rt.owned_until > time.monotonic():
            return True
        t0 = time.monotonic()
        held = self.store.renew_owner({rt.rid: rt.owner}, int(self.owner_ttl_s * 1000)).get(rt.rid, False)
        if held:
            rt.owned_until = t0 + 0.8 * self.owner_ttl_s
            return True
        self.drop(rt, OwnershipLost(f"run {rt.rid} is now served by another replica; retry"))
        return False

    def try_lock(self, rid: str) -> RunRuntime | None:
        """The loaded run ``rid`` with its lock acquired, if that needs no waiting (the caller releases
        ``rt.lock``); None when the run is not in memory yet (or not surely ours) or another thread holds
        it."""
        rt = self._runs.get(rid)
        if rt is not None and rt.broken is None and rt.owned_until > time.monotonic() \
                and rt.lock.acquire(blocking=False):
            rt.last_used = time.monotonic()
            return rt
        return None

    def forget(self, rid: str) -> None:
        """Drop the in-memory copy (after a failed change): what it already queued is stored first, nothing
        is queued from it again, and the next call reloads the stored truth."""
        rt = self._runs.get(rid)
        if rt is not None:
            try:
                self.writer.flush(rt)
            except Exception:  # noqa: BLE001 - a failed write already dropped it
                pass
            rt.broken = rt.broken or RuntimeError(f"run {rid} was reloaded; retry")
        with self._lock:
            if self._runs.get(rid) is rt:
                self._runs.pop(rid, None)

    def drop(self, rt: RunRuntime, why: BaseException) -> None:
        """This copy is stale (``why``): never written again, and no longer served from memory."""
        rt.broken = rt.broken or why
        with self._lock:
            if self._runs.get(rt.rid) is rt:
                del self._runs[rt.rid]

    def release(self, rid: str) -> None:
        """Write what the run has queued, give up its ownership lease and drop it from memory (idle eviction,
        shutdown): the next call, here or on another replica, loads it from Redis."""
        rt = self._runs.get(rid)
        if rt is None:
            return
        with rt.lock:
            try:
                self.writer.flush(rt)
            except Exception:  # noqa: BLE001 - a failed write already dropped it
                pass
            self.drop(rt, OwnershipLost(f"run {rid} was released by this replica; retry"))
            self.store.release_owner(rid, rt.owner)

    def close(self) -> None:
        """Release every run (graceful shutdown: other replicas take them over at once)."""
        self._stop.set()
        for rid in list(self._runs):
            try:
                self.release(rid)
            except Exception as e:  # noqa: BLE001 - shutting down: report, go on
                log.warning("releasing run %s: %s", rid, e)
        if self._http is not None:
            self._http.close()

    def _start_keeper(self) -> None:
        if self._keeper is None:
            t = threading.Thread(target=self._keep_loop, name="tiebreak-owner-keeper", daemon=True)
            self._keeper = t
            t.start()

    def _keep_loop(self) -> None:
        """Renew the ownership lease of every run in memory every owner_ttl_s / 3; drop the runs whose lease
        is gone; release runs idle for idle_evict_s."""
        while not self._stop.wait(self.owner_ttl_s / 3):
            if self.store.closed:
                return
            try:
                self.renew_all()
                now = time.monotonic()
                for rid, rt in list(self._runs.items()):
                    if now - rt.last_used > self.idle_evict_s:
                        self.release(rid)
            except Exception as e:  # noqa: BLE001 - Redis down: the leases lapse, writes are refused
                log.warning("renewing run ownership: %s", e)

    def renew_all(self) -> None:
        runs = {rid: rt for rid, rt in list(self._runs.items()) if rt.broken is None}
        t0 = time.monotonic()
        held = self.store.renew_owner({rid: rt.owner for rid, rt in runs.items()}, int(self.owner_ttl_s * 1000))
        for rid, ok in held.items():
            rt = runs[rid]
            if ok:
                rt.owned_until = t0 + 0.8 * self.owner_ttl_s
            else:
                log.warning("lost the ownership of run %s (another replica took it over)", rid)
                self.drop(rt, OwnershipLost(f"run {rid} is now served by another replica; retry"))

    def _evict_lru(self) -> None:
        if len(self._runs) <= self.max_runs:
            return
        by_age = sorted(self._runs.values(), key=lambda r: r.last_used)
        for rt in by_age[:len(self._runs) - self.max_runs]:
            self.release(rt.rid)

    # ------------------------------------------------------------------------------------- routing
    def route(self, method: str, rid: str, args: tuple, *, forwarded: bool = False) -> Any:
        """``method`` of run ``rid``: run here on the owned run (``local(method)(rt, *args)``), or forwarded to
        the replica that owns it. ``forwarded``: this call came from another replica (never forward again:
        take the run if we can, else 503)."""
        try:
            rt = self.runtime(rid)
        except NotOwner as e:
            if forwarded:
                raise Unavailable(f"run {rid} is owned by another replica ({e.value}); retry") from e
            if e.url:
                return self._forward(e, method, rid, args)
            rt = self._take_over(rid, e)       # an owner without an address (in-process): wait for its lease
        return self.local(method)(rt, *args)

    def check_args(self, method: str, args: list) -> None:
        """A forwarded call's arguments must fit the method (a clear 422 instead of a TypeError deep inside)."""
        try:
            inspect.signature(self.local(method)).bind(None, *args)
        except TypeError as e:
            raise BadInput(f"arguments of {method}: {e}", "args") from e

    def _take_over(self, rid: str, e: NotOwner) -> RunRuntime:
        """The run, once the lease of its unreachable owner has expired (at most ~owner_ttl_s)."""
        try:
            return self.runtime(rid, wait_s=self.owner_ttl_s * 1.5)
        except NotOwner as again:
            raise Unavailable(f"the replica that owns run {rid} ({e.url or 'no address'}) does not answer but "
                              "still renews its lease; retry") from again

    def _forward(self, e: NotOwner, method: str, rid: str, args: tuple) -> Any:
        import httpx

        if self._http is None:
            self._http = httpx.Client(timeout=httpx.Timeout(120.0, connect=2.0))
        try:
            r = self._http.post(f"{e.url}/v1/internal/runs/{rid}/{method}", json={"args": list(args)},
                                headers={"Authorization": f"Bearer {self.token}"})
        except httpx.ConnectError:
            # the owner is gone (nothing was sent): take the run over once its lease expires
            log.warning("owner of run %s at %s is unreachable; taking over when its lease expires", rid, e.url)
            return self.local(method)(self._take_over(rid, e), *args)
        except httpx.HTTPError as err:
            raise Unavailable(f"the replica that owns run {rid} did not answer ({type(err).__name__}); "
                              "retry (a label is idempotent, a retried `next` returns the same lease)") from err
        if r.status_code >= 400:
            raise RemoteError(r.status_code, r)
        return r.json()["result"]
