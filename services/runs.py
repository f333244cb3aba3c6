"""RunService: the business logic behind /v1/runs — pools of pairs, leases, labels, the sampler, decisions.

One API process owns each run at a time (an ownership lease in Redis, see ``RunService``; other replicas
forward to it): the run is rehydrated from Redis into a ``RunRuntime`` (the sampler's ``Comparison`` objects,
the pair index, labels and leases) on first use, and every change is written back in one atomic, fenced write
(``RedisStore.apply``) before the call returns, so a restart (or kill -9) resumes every run exactly.

A run has one ``Comparison`` for the overall verdict plus one per criterion; with criteria, alpha is split by
Bonferroni (``sampler.decision.split_alpha``) over 1 + len(criteria) comparisons. The overall comparison drives
the draws; pairs a criterion comparison draws are handed out too. With ``labels_per_pair`` = k > 1 a pair is
handed to k different annotators and the sampler gets the mean of their verdicts once all k are in.

Slices: pairs may carry ``slices`` (tags); ``meta["slices"]`` are the slices of interest (default: all present).
Every comparison then also follows a verdict per slice on its own draws (sampler.slices) and alpha is split by
Bonferroni over (1 + slices) x (1 + criteria) questions. A comparison is ``finished`` when its verdict and every
slice verdict are final; the run hands out pairs until the overall comparison is finished (after the overall
verdict, only pairs of slices still running). Slices are stored with the pair and never shown to annotators.

Writes (group commit): the label hot path (``next``, ``labels``) changes memory under the run's lock, queues
its write and releases the lock; one writer thread turns everything queued into one ``RedisStore.apply``
script (FIFO, so the ops log keeps the order of memory), and the caller answers only once its write is
durable. So the run's lock is not held across a Redis round trip and concurrent calls share round trips. If a
write fails, every queued write of that run fails too (they were computed from the lost state: the run's write
sequence number refuses them) and the in-memory copy is dropped: the next call reloads the stored truth; the
other runs' writes of a failed batch are retried one by one (one bad write never fails unrelated writes). A
label is never answered before it is stored. A decision's ``run.decided`` webhook is written to the Redis
outbox in the same write (services/webhooks.py: at least once).

Leases: ``next`` hands the annotator a lease on one pair for ``lease_ttl_s`` seconds. While live, the pair is
not handed to anyone else (beyond k). An expired lease stops counting: the pair is still drawn-and-pending in
the sampler, so the next ``next`` call hands that same pair out first.

Label intake (who may label what): a label through the API must come from the holder of a lease on that pair
(``lease_id`` or, without it, the lease that annotator holds on the pair). A label from an annotation tool
(Label Studio, Argilla) must be for a pair the sampler drew (the tools' exports hand out drawn pairs only)
that still needs a label and is not leased to enough others. Anything else is refused (409/403) and changes
nothing: no label is stored, nothing reaches the sampler, the budget is not touched.

Expired leases (decided): a lease that expired is still honoured while the pair was not handed to anyone else
and for at most one more ``lease_ttl_s`` (the *grace*), because the label is as valid as any other (the draw
never depends on who labels) and refusing a late but honest label only wastes work. Once the pair is leased to
another annotator, or labelled k times, or the grace is over, the old lease is gone (deleted from Redis with
the next write of the run) and a label with it gets 409.
"""

from __future__ import annotations

import json
import logging
import math
import queue
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sampler.engine import Comparison, ComparisonConfig, label_from_verdict
from sampler.slices import MAX_SLICES, alpha_split_text, best_case_labels, membership_matrix, slice_alpha
from services.errors import BadInput, Conflict, Forbidden, NotFound, ServiceError, Unavailable
from services.store import RedisStore
from services.webhooks import outbox_entry

log = logging.getLogger(__name__)

OVERALL = "overall"
VERDICTS = ("left", "right", "tie")


@dataclass
class Lease:
    lease_id: str
    idx: int
    annotator: str
    expires: float

    def to_dict(self) -> dict:
        return {"idx": self.idx, "annotator": self.annotator, "expires": self.expires}


@dataclass
class Pending:
    """A change made in memory whose write is queued: ``finish(result)`` once ``fut`` (None: nothing to wait
    for) is resolved gives the answer. ``RunService.wait`` does this synchronously; the async routes await."""

    fut: Future | None
    finish: Callable[[Any], Any]


@dataclass
class RunRuntime:
    rid: str
    meta: dict
    pair_index: dict[str, tuple[int, bool]]          # pair_id -> (idx, tuned_left)
    pair_ids: list[str]                               # idx -> pair_id
    comps: dict[str, Comparison] = field(default_factory=dict)
    labels: dict[int, dict[str, dict]] = field(default_factory=dict)   # idx -> annotator -> record
    leases: dict[str, Lease] = field(default_factory=dict)
    n_voted: int = 0
    n_annotations: int = 0
    per_annotator: dict[str, int] = field(default_factory=dict)
    lock: threading.RLock = field(default_factory=threading.RLock)
    ops: list = field(default_factory=list)        # sampler operations not yet written (see _commit)
    ops_total: int = 0                             # operations in Redis (tb:run:{rid}:ops)
    ops_at_snapshot: int = 0                       # operations already contained in the stored snapshots
    tail: Future | None = None                     # the run's last queued write (see RunService._enqueue)
    broken: BaseException | None = None            # a write failed: this copy is stale, never written again
    seq: int = 0                                   # the run's write sequence number for the next write
    owner: str = ""                                # our ownership lease value ("{fence} {replica} {url}")
    owned_until: float = 0.0                       # monotonic time until which the lease surely holds
    last_used: float = field(default_factory=time.monotonic)
    outbox: list = field(default_factory=list)      # webhook outbox entries for the next write

    @property
    def criteria(self) -> list[str]:
        return list(self.meta.get("criteria") or [])

    @property
    def required(self) -> int:
        return int(self.meta.get("labels_per_pair", 1))


def _now() -> float:
    return time.time()


def _mean(xs: list[float]) -> float:
    return float(sum(xs) / len(xs))


def _no_votes(n: int, width: int = 1) -> np.ndarray:
    """Labels-only comparisons get one all-missing vote column (method "classical" ignores it): the engine's
    JSON round trip cannot reshape a (N, 0) vote matrix."""
    return np.full((n, width), np.nan)


def offer_label(comp: Comparison, idx: int, y: float) -> bool:
    """Give a comparison the (final) label of pair idx: recorded at once when the pair is drawn and pending,
    otherwise kept and consumed for free when the pair is drawn (as the engine does with labels carried over
    from an earlier pool version). The draw never depends on label values, so validity is unaffected."""
    if idx >= comp.n_items or idx in comp.labels:
        return False
    if idx in set(comp.pending_items()):
        return comp.record_label(idx, y)
    comp.labels[idx] = float(y)
    return True


class NotOwner(Exception):
    """The run is owned by another live replica (``value`` = its ownership lease "{fence} {replica} {url}")."""

    def __init__(self, rid: str, value: str):
        super().__init__(f"run {rid} is owned by {value}")
        self.rid = rid
        self.value = value

    @property
    def url(self) -> str:
        return self.value.split(" ", 2)[2] if self.value.count(" ") >= 2 else ""


class RemoteError(ServiceError):
    """The owner replica answered a forwarded call with an error: passed on with its status and detail."""

    def __init__(self, status: int, response: Any):
        try:
            detail = response.json().get("detail")
        except ValueError:
            detail = response.text
        super().__init__(str(detail))
        self.status_code = status
        self._detail = detail if isinstance(detail, list) else [{"loc": [], "msg": str(detail),
                                                                  "type": "RemoteError"}]

    def detail(self) -> list[dict]:
        return self._detail


class OwnershipLost(Unavailable):
    """A write was refused because this replica no longer owns the run (or its copy is stale): nothing of it
    was stored; the caller retries (the run is served by its owner, or reloaded here)."""


# Routed methods (RunService.route): run on the replica that owns the run; others forward them over HTTP.
ROUTED = ("next_pair", "submit_label", "status", "report_data", "report_html", "draw_batch", "add_pairs",
          "run_meta")


class RunService:
    """Create runs, hand out pairs, take labels, report status. Thread-safe (a lock per run).

    **One owner per run** (several API replicas on one Redis). A replica serves a run only while it holds the
    run's ownership lease in Redis (``tb:run:{rid}:owner``, SET with PX ``owner_ttl_s``, renewed every third
    of it by a background thread; value "{fence} {replica id} {advertised url}", the fence INCR'd on every new
    owner). Every write of the run is one script that checks that value and the run's write sequence number
    (``RedisStore.apply``): a replica that lost the lease (paused, partitioned) can never write again, a copy
    that missed a write can never write, and a write re-sent by redis-py's retry is applied once. The copy is
    then dropped and the call answered 503 (retry).

    Every method that touches a run goes through ``route``: here (``_local_{method}``) if we own the run (taking the lease when
    nobody holds it, loading the run from Redis), else forwarded over HTTP to the owner's advertised URL
    (``POST /v1/internal/runs/{rid}/{method}``, admin token). When the owner does not answer the connection
    (killed), we wait for its lease to expire (at most ``owner_ttl_s``) and take the run over from Redis. A
    lease held by an earlier incarnation of this very address (same URL, other replica id: we restarted) is
    taken over at once. Runs idle for ``idle_evict_s`` are written, released and dropped from memory (and at
    most ``max_runs`` are kept, least recently used first).
    """

    def __init__(self, store: RedisStore, *, notify: Callable[[str, dict, str | None], None] | None = None,
                 metrics: Any = None, lease_ttl_s: float = 600.0, url: str = "", token: str = "",
                 owner_ttl_s: float = 10.0, webhook_url: str | None = None, idle_evict_s: float = 1800.0,
                 max_runs: int = 1000):
        self.store = store
        self.notify = notify
        self.metrics = metrics
        self.default_lease_ttl_s = lease_ttl_s
        self.webhook_url = webhook_url       # default run.decided receiver (the outbox delivers, see webhooks.py)
        self.pipeline: Any = None            # set by the app: services.pipeline.Pipeline
        self.replica = uuid.uuid4().hex[:12]
        self.url = url.rstrip("/")           # where other replicas reach this one ("" = in-process only)
        self.token = token                   # the admin token, sent with forwarded calls
        self.owner_ttl_s = owner_ttl_s
        self.idle_evict_s = idle_evict_s
        self.max_runs = max_runs
        self._runs: dict[str, RunRuntime] = {}
        self._lock = threading.Lock()
        self._wq: queue.SimpleQueue = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._http: Any = None
        self._stop = threading.Event()
        self._keeper: threading.Thread | None = None

    # ------------------------------------------------------------------------------------- creation
    def create_run(self, spec: dict) -> str:
        """``spec`` = validated RunCreate as a dict. Returns the run id."""
        rid = uuid.uuid4().hex[:16]
        now = _now()
        judges = list(spec.get("judges") or [])
        meta = {
            "run_id": rid, "name": spec["name"], "created_at": now, "status": "ready",
            "alpha": spec.get("alpha") or 0.05, "margin": spec.get("margin") or 0.0, "budget": spec.get("budget"),
            "method": spec.get("method"), "criteria": list(spec.get("criteria") or []),
            "judges": judges, "judge_names": [], "labels_per_pair": spec.get("labels_per_pair") or 1,
            "lease_ttl_s": spec.get("lease_ttl_s") or self.default_lease_ttl_s,
            "webhook_url": spec.get("webhook_url"), "seed": spec["seed"] if spec.get("seed") is not None else secrets.randbits(32),
            "n_active": 0, "generate": None, "progress": {}, "error": None, "decided_notified": False,
        }
        for c in meta["criteria"]:
            if c == OVERALL:
                raise BadInput("criteria must not contain 'overall' (the overall verdict is always collected)",
                               "criteria")
        source = spec["pairs"] if spec.get("pairs") is not None else spec["generate"]["prompts"]
        meta["slices"], meta["slice_warnings"] = self._slices_of_interest(
            source, spec.get("slices_of_interest"), meta["alpha"], len(meta["criteria"]), meta["budget"])
        if spec.get("pairs") is not None:
            pairs = spec["pairs"]
            self._check_pair_ids(pairs, set())
            supplied = [p.get("judge_votes") for p in pairs]
            if any(v is not None for v in supplied):
                # Supplied votes are all the run will get (no judge runs for them): a pair without any would
                # never become ready, and the run would wait for it for ever.
                missing = next((i for i, v in enumerate(supplied) if v is None), None)
                if missing is not None:
                    raise BadInput(f"pair {pairs[missing].get('id')!r} has no judge_votes while other pairs do: "
                                   "give every pair judge_votes ({judge: null} for a missing vote), or none "
                                   "and name the judges to run", f"pairs.{missing}.judge_votes")
                names = sorted({k for v in supplied if v for k in v})
                meta["judge_names"] = names
            elif judges:
                meta["judge_names"] = self._judge_names(judges)
                meta["status"] = "judging"
            self.store.stage_pairs(rid, *self._pair_rows(meta, pairs))
            self.store.create_run(rid, meta, now)      # the commit point: before it the run does not exist
        else:
            gen = spec["generate"]
            meta["generate"] = gen
            meta["status"] = "generating"
            meta["judge_names"] = self._judge_names(judges) if judges else []
            meta["progress"] = {"generated": 0, "to_generate": len(gen["prompts"]), "judged": 0}
            self.store.create_run(rid, meta, now)
        rt = self.runtime(rid)
        with rt.lock:
            self._maybe_activate(rt)
        if rt.meta["status"] in ("generating", "judging"):
            self._start_pipeline(rid)
        if self.metrics:
            self.metrics.runs_created.inc()
        return rid

    @staticmethod
    def _slices_of_interest(items: list[dict], wanted: list[str] | None, alpha: float, n_criteria: int,
                            budget: int | None) -> tuple[list[str], list[str]]:
        """The slices that get a verdict, and warnings said up front (sampler.slices)."""
        sizes: dict[str, int] = {}
        for p in items:
            for s in p.get("slices") or []:
                sizes[s] = sizes.get(s, 0) + 1
        if wanted is None:
            names = sorted(sizes)
            if len(names) > MAX_SLICES:
                raise BadInput(f"the pairs carry {len(names)} slices; a run follows at most {MAX_SLICES} (each "
                               f"one costs alpha): pass slices_of_interest with the ones that matter",
                               "slices_of_interest")
        else:
            names = list(wanted)
            if len(set(names)) != len(names):
                raise BadInput("slices_of_interest must be distinct", "slices_of_interest")
            if len(names) > MAX_SLICES:
                raise BadInput(f"{len(names)} slices of interest; at most {MAX_SLICES} (each one costs alpha)",
                               "slices_of_interest")
            for i, s in enumerate(names):
                if s not in sizes:
                    raise BadInput(f"slice of interest {s!r} tags no pair; slices present: "
                                   f"{', '.join(sorted(sizes)) or '(none: give pairs a slices field)'}",
                                   f"slices_of_interest.{i}")
        warnings = []
        each = slice_alpha(alpha, len(names), 1 + n_criteria)
        for s in names:
            n = sizes[s]
            need = best_case_labels(n, each)
            if need >= n:
                warnings.append(f"slice {s!r} has {n} pair{'s' if n != 1 else ''}: even if every label agrees, only labelling all "
                                f"{n} can decide it (its verdict then describes exactly those pairs)")
            elif budget is not None and need > budget:
                warnings.append(f"slice {s!r} needs at least {need} labels to be decided; the budget is {budget}")
        return names, warnings

    @staticmethod
    def _judge_names(judges: list) -> list[str]:
        from services.pipeline import judge_name

        names = [judge_name(j) for j in judges]
        if len(set(names)) != len(names):
            raise BadInput(f"judges must be distinct, got {names}", "judges")
        return names

    @staticmethod
    def _check_pair_ids(pairs: list[dict], existing: set[str] | dict) -> None:
        seen: set[str] = set()
        for i, p in enumerate(pairs):
            pid = p["id"]
            if pid in seen or pid in existing:
                raise Conflict(f"pair id {pid!r} is used twice; pair ids must be unique within a run",
                               f"pairs.{i}.id")
            seen.add(pid)

    def _pair_rows(self, meta: dict, pairs: list[dict]) -> tuple[list[dict], list[dict | None]]:
        """The stored rows of new pairs (blind order drawn here) and their votes per criterion."""
        names = meta["judge_names"]
        rows = []
        votes: list[dict | None] = []
        for i, p in enumerate(pairs):
            rows.append({"id": p["id"], "prompt": p["prompt"], "base": p["base"], "tuned": p["tuned"],
                         "tuned_left": bool(secrets.randbits(1))})
            if p.get("slices"):  # stored with the pair, never put into an annotator's view
                rows[-1]["slices"] = list(p["slices"])
            jv = p.get("judge_votes")
            if jv is not None:
                unknown = set(jv) - set(names)
                if unknown:
                    raise BadInput(f"judge_votes names unknown judges {sorted(unknown)}; this run's judges are "
                                   f"{names}", f"pairs.{i}.judge_votes")
                votes.append({OVERALL: [jv.get(n) for n in names]})
            elif not names:
                votes.append(None)
            elif meta["status"] == "judging" or meta["judges"]:
                votes.append(None)  # the judge pipeline will vote
            else:
                votes.append({OVERALL: [None] * len(names)})  # supplied-votes run: this pair has none
        return rows, votes

    def _store_pairs(self, rt: RunRuntime, pairs: list[dict]) -> None:
        """Append pairs to a run and its meta in one write (all of them or none) and index them in memory."""
        start = len(rt.pair_ids)
        rows, votes = self._pair_rows(rt.meta, pairs)
        self._commit(rt, cmds=self.store.pair_cmds(rt.rid, start, rows, votes), meta=rt.meta)
        for i, row in enumerate(rows):
            rt.pair_index[row["id"]] = (start + i, bool(row["tuned_left"]))
            rt.pair_ids.append(row["id"])

    def add_pairs(self, rid: str, pairs: list[dict]) -> dict:
        return self.route("add_pairs", rid, pairs)

    def _local_add_pairs(self, rt: RunRuntime, pairs: list[dict]) -> dict:
        rid = rt.rid
        with rt.lock:
            self._flush(rt)
            if rt.meta.get("generate") and rt.meta["status"] == "generating":
                raise Conflict("this run is still generating outputs; add pairs when its status is 'ready'",
                               "pairs")
            self._check_pair_ids(pairs, rt.pair_index)
            meta = rt.meta
            if meta.get("judge_names") and not meta["judges"]:      # a run over supplied votes only
                missing = next((i for i, p in enumerate(pairs) if p.get("judge_votes") is None), None)
                if missing is not None:
                    raise BadInput(f"pair {pairs[missing].get('id')!r} has no judge_votes, and this run's votes "
                                   "are supplied, not judged: give judge_votes ({judge: null} for a missing vote)",
                                   f"pairs.{missing}.judge_votes")
            if meta["judges"] and any(p.get("judge_votes") is None for p in pairs):
                meta["status"] = "judging"
            self._store_pairs(rt, pairs)
            self._maybe_activate(rt)
            if meta["status"] == "judging":
                self._start_pipeline(rid)
            return {"run_id": rid, "added": len(pairs), "n_pairs": len(rt.pair_ids)}

    def _start_pipeline(self, rid: str) -> None:
        if self.pipeline is not None:
            self.pipeline.submit(rid)

    # --------------------------------------------------------------------------------- rehydration
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
                    rt = self._load(rid, value)
                    self._start_keeper()
                    break
            if time.monotonic() >= deadline:
                raise NotOwner(rid, self.store.owner_of(rid) or "")
            time.sleep(min(0.2, self.owner_ttl_s / 10))
        if rt.meta["status"] in ("generating", "judging"):
            self._start_pipeline(rid)        # taken over (or restarted) mid-pipeline: carry on here
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
        self._drop(rt, OwnershipLost(f"run {rt.rid} is now served by another replica; retry"))
        return False

    def try_lock(self, rid: str) -> RunRuntime | None:
        """The loaded run ``rid`` with its lock acquired, if that needs no waiting (the caller releases
        ``rt.lock``); None when the run is not in memory yet (or not surely ours) or another thread holds
        it. Lets the async routes do a label round trip on the event loop and fall back to a worker thread
        (which loads, takes over or forwards the run: ``route``) otherwise."""
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
                self._flush(rt)
            except Exception:  # noqa: BLE001 - a failed write already dropped it
                pass
            rt.broken = rt.broken or RuntimeError(f"run {rid} was reloaded; retry")
        with self._lock:
            if self._runs.get(rid) is rt:
                self._runs.pop(rid, None)

    def _drop(self, rt: RunRuntime, why: BaseException) -> None:
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
                self._flush(rt)
            except Exception:  # noqa: BLE001 - a failed write already dropped it
                pass
            self._drop(rt, OwnershipLost(f"run {rid} was released by this replica; retry"))
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
            if getattr(self.store, "_closed", False):
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
                self._drop(rt, OwnershipLost(f"run {rid} is now served by another replica; retry"))

    def _evict_lru(self) -> None:
        if len(self._runs) <= self.max_runs:
            return
        by_age = sorted(self._runs.values(), key=lambda r: r.last_used)
        for rt in by_age[:len(self._runs) - self.max_runs]:
            self.release(rt.rid)

    # ------------------------------------------------------------------------------------- routing
    def route(self, method: str, rid: str, *args: Any, forwarded: bool = False) -> Any:
        """``method`` of run ``rid``: run here on the owned run (``_local_{method}(rt, *args)``), or forwarded to
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
        return getattr(self, "_local_" + method)(rt, *args)

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
            return getattr(self, "_local_" + method)(self._take_over(rid, e), *args)
        except httpx.HTTPError as err:
            raise Unavailable(f"the replica that owns run {rid} did not answer ({type(err).__name__}); "
                              "retry (a label is idempotent, a retried `next` returns the same lease)") from err
        if r.status_code >= 400:
            raise RemoteError(r.status_code, r)
        return r.json()["result"]

    def local_call(self, method: str, rid: str, args: list) -> Any:
        """A call forwarded by another replica (the internal route)."""
        if method not in ROUTED:
            raise NotFound(f"unknown method {method!r}", "method")
        import inspect

        try:
            inspect.signature(getattr(self, "_local_" + method)).bind(None, *args)
        except TypeError as e:
            raise BadInput(f"arguments of {method}: {e}", "args") from e
        return self.route(method, rid, *args, forwarded=True)

    def run_meta(self, rid: str) -> dict:
        return self.route("run_meta", rid)

    def _local_run_meta(self, rt: RunRuntime) -> dict:
        with rt.lock:
            return json.loads(json.dumps(rt.meta))

    def _load(self, rid: str, owner: str) -> RunRuntime:
        meta = self.store.get_meta(rid)
        if meta is None:
            raise NotFound(f"run {rid!r} does not exist", "run_id")
        index = self.store.load_index(rid)
        pair_ids = [""] * len(index)
        for pid, (i, _) in index.items():
            pair_ids[i] = pid
        rt = RunRuntime(rid, meta, index, pair_ids)
        rt.owner = owner
        rt.owned_until = time.monotonic() + 0.8 * self.owner_ttl_s
        rt.seq = self.store.load_seq(rid)
        rt.n_voted = self.store.n_votes(rid)
        n = meta["n_active"]
        if n:
            mats, _ = self._vote_matrices(rt, 0, n)
            states = self.store.load_states(rid)
            rt.ops_at_snapshot = int(states.pop("_ops_at", 0))
            for name, s in states.items():
                d = json.loads(s)
                m = mats.get(name)
                if m is None or m.shape[1] != d["n_judges"]:   # a comparison without judge votes
                    m = _no_votes(n, d["n_judges"]) if d["n_judges"] else _no_votes(n)
                rt.comps[name] = Comparison.from_dict(d, m)
            ops = self.store.load_ops(rid)
            rt.ops_total = len(ops)
            for op in ops[rt.ops_at_snapshot:]:       # replay what happened after the snapshot
                o = json.loads(op)
                if o[0] == "next":
                    rt.comps[o[1]].next_items(o[2])
                elif o[0] == "votes":                 # votes streamed in (add_votes), in log order
                    for name, comp in rt.comps.items():
                        m = mats.get(name)
                        if comp.votes.shape[1] and m is not None and m.shape[1] == comp.votes.shape[1]:
                            comp.add_votes(o[1], m[o[1]])
                else:
                    offer_label(rt.comps[o[1]], o[2], o[3])
            # keep the overall comparison first
            rt.comps = {k: rt.comps[k] for k in [OVERALL, *rt.criteria] if k in rt.comps}
        for idx, ann, rec in self.store.load_labels(rid):
            rt.labels.setdefault(idx, {})[ann] = rec
            rt.n_annotations += 1
            rt.per_annotator[ann] = rt.per_annotator.get(ann, 0) + 1
        now = _now()
        expired = []
        grace = float(meta["lease_ttl_s"])
        for lid, d in self.store.load_leases(rid).items():
            if d["expires"] + grace > now:     # expired leases are honoured during their grace
                rt.leases[lid] = Lease(lid, int(d["idx"]), d["annotator"], float(d["expires"]))
            else:
                expired.append(lid)
        self._runs[rid] = rt
        if expired:
            self._enqueue(rt, release=expired)
        return rt

    def _vote_matrices(self, rt: RunRuntime, lo: int, hi: int
                       ) -> tuple[dict[str, np.ndarray | None], np.ndarray | None]:
        """Judge-vote matrices (rows lo..hi-1) per comparison (None for a comparison without judge votes), and
        which rows have their votes stored (None: all; a run whose judges are still voting streams the rest)."""
        names = rt.meta["judge_names"]
        out: dict[str, np.ndarray | None] = {}
        votes = self.store.all_votes(rt.rid) if names else {}
        judged = bool(rt.meta["judges"])    # judges will vote on every criterion, now or later
        for comp in [OVERALL, *rt.criteria]:
            if not names:
                out[comp] = None
                continue
            rows = []
            have = False
            for i in range(lo, hi):
                v = (votes.get(i) or {}).get(comp)
                if v is not None:
                    have = True
                rows.append([math.nan if x is None else float(x) for x in (v or [None] * len(names))])
            out[comp] = np.asarray(rows, dtype=float).reshape(hi - lo, len(names)) if have or judged \
                or comp == OVERALL else None
        voted = None
        if judged:
            voted = np.fromiter((i in votes for i in range(lo, hi)), dtype=bool, count=hi - lo)
        return out, voted

    def _maybe_activate(self, rt: RunRuntime) -> bool:
        """Put pairs [n_active, n) into the comparisons: at once, whether or not their judge votes have
        arrived (a streaming run: votes that arrive later go through ``add_votes``, see sampler.engine)."""
        meta = rt.meta
        lo, hi = meta["n_active"], len(rt.pair_ids)
        if hi <= lo:
            return False
        mats, voted = self._vote_matrices(rt, lo, hi)
        crits = rt.criteria
        slice_names = list(meta.get("slices") or [])
        member = None
        if slice_names:
            rows = self.store.get_pairs(rt.rid, range(lo, hi))
            _, member = membership_matrix([(r or {}).get("slices") for r in rows], slice_names)
        # Bonferroni over (overall + slices) x (overall verdict + criteria); no slices: alpha / (1 + C)
        alpha_each = slice_alpha(meta["alpha"], len(slice_names), 1 + len(crits))
        for k, name in enumerate([OVERALL, *crits]):
            mat = mats.get(name)
            if name in rt.comps:
                comp = rt.comps[name]
                width = comp.votes.shape[1]
                if mat is not None and mat.shape[1] == width:
                    comp.add_items(mat, slice_member=member, voted=voted if width else None)
                else:
                    comp.add_items(_no_votes(hi - lo, width), slice_member=member)
            else:
                has_votes = mat is not None and mat.shape[1] > 0
                method = (meta.get("method") or "active") if has_votes else "classical"
                cfg = ComparisonConfig(alpha=alpha_each, margin=meta["margin"], budget=meta["budget"], method=method)
                rng = np.random.default_rng([int(meta["seed"]), k])
                rt.comps[name] = Comparison(mat if has_votes else _no_votes(hi - lo), config=cfg, rng=rng,
                                            voted=voted if has_votes else None)
                if member is not None:
                    rt.comps[name].set_slices(slice_names, member)
        # labels that arrived for pairs before they were active
        for idx in list(rt.labels):
            if lo <= idx < hi:
                self._feed(rt, idx)
        meta["n_active"] = hi
        rt.n_voted = self.store.n_votes(rt.rid)
        if meta["status"] in ("judging", "generating"):   # labellable now; "judging" while votes still arrive
            meta["status"] = "judging" if self._votes_missing(rt) else "ready"
        # a snapshot that includes every operation so far (add_items is not a logged operation)
        self._commit(rt, meta=meta, snapshot=True)
        return True

    # ------------------------------------------------------------------------------------- pipeline
    # The pipeline's calls run only on the run's owner (the replica that started the pipeline, or took the run
    # over and resumed it): a pipeline whose replica lost the run gets NotOwner and stops.
    def set_status(self, rid: str, status: str, error: str | None = None, progress: dict | None = None) -> None:
        rt = self.runtime(rid)
        with rt.lock:
            rt.meta["status"] = status
            if error is not None:
                rt.meta["error"] = error
            if progress:
                rt.meta["progress"].update(progress)
            self._commit(rt, meta=rt.meta)

    def add_generated_pairs(self, rid: str, pairs: list[dict]) -> None:
        """Called by the pipeline when generation finished: store the pairs (status goes to judging/ready)."""
        rt = self.runtime(rid)
        with rt.lock:
            have = set(rt.pair_index)
            new = [p for p in pairs if p["id"] not in have]
            rt.meta["status"] = "judging" if rt.meta["judges"] else "ready"
            if new:
                self._store_pairs(rt, new)
            else:
                self._commit(rt, meta=rt.meta)
            self._maybe_activate(rt)

    def add_votes(self, rid: str, votes: dict[int, dict]) -> None:
        """Store judge votes {idx: {criterion: [p per judge]}} (called by the pipeline per batch).

        The pairs are labellable already (streaming): each comparison gets the votes now and uses them from its
        next calibration refit. The "votes" op is logged in the same write as the votes, so a reload replays
        it at the same point between draws and labels (exact state)."""
        rt = self.runtime(rid)
        with rt.lock:
            if votes:
                active = sorted(int(i) for i in votes if int(i) < rt.meta["n_active"])
                if active and rt.comps:
                    for name, comp in rt.comps.items():
                        width = comp.votes.shape[1]
                        if width:
                            rows = [[math.nan if x is None else float(x)
                                     for x in ((votes[i].get(name) if votes[i] else None) or [None] * width)]
                                    for i in active]
                            comp.add_votes(active, rows)
                    rt.ops.append(["votes", active])
                self._commit(rt, cmds=[["HSET", self.store.k(rid, "votes"),
                                        *[x for i, v in votes.items() for x in (str(i), json.dumps(v))]]])
            rt.n_voted = self.store.n_votes(rid)
            rt.meta["progress"]["judged"] = rt.n_voted
            if rt.meta["status"] == "judging" and rt.meta["n_active"] == len(rt.pair_ids) \
                    and not self._votes_missing(rt):
                rt.meta["status"] = "ready"
            self._commit(rt, meta=rt.meta)
            self._maybe_activate(rt)

    @staticmethod
    def _votes_missing(rt: RunRuntime) -> bool:
        """Judges are configured and some pair has no votes yet."""
        return bool(rt.meta["judges"]) and rt.n_voted < len(rt.pair_ids)

    def unvoted_pairs(self, rid: str) -> list[tuple[int, dict]]:
        rt = self.runtime(rid)
        have = set(self.store.all_votes(rid))
        todo = [i for i in range(len(rt.pair_ids)) if i not in have]
        out = []
        for i, pair in zip(todo, self.store.get_pairs(rid, todo), strict=True):
            if pair is None:  # every pair is stored when the run is created (RedisStore.create_run)
                raise RuntimeError(f"run {rid}: pair {i} is missing from the store")
            out.append((i, pair))
        return out

    # ------------------------------------------------------------------------------------ annotation
    @staticmethod
    def _live_leases(rt: RunRuntime, now: float) -> list[Lease]:
        """Leases that have not expired (expired ones stay in ``rt.leases`` during their grace, see the module
        docstring, but no longer keep the pair from others)."""
        return [le for le in rt.leases.values() if le.expires > now]

    @staticmethod
    def _grace_s(rt: RunRuntime) -> float:
        return float(rt.meta["lease_ttl_s"])

    def _sweep_leases(self, rt: RunRuntime, now: float) -> list[str]:
        """Drop expired leases past their grace from memory; returns their ids (to delete from Redis with the
        caller's next write)."""
        grace = self._grace_s(rt)
        dead = [lid for lid, le in rt.leases.items() if le.expires + grace <= now]
        for lid in dead:
            del rt.leases[lid]
        return dead

    def next_pair(self, rid: str, annotator: str) -> dict | None:
        """Lease the next pair for ``annotator``; None when nothing is to be labelled now."""
        return self.route("next_pair", rid, annotator)

    def _local_next_pair(self, rt: RunRuntime, annotator: str) -> dict | None:
        with rt.lock:
            p = self.next_pair_locked(rt, annotator)
        return self.wait(p)

    def next_pair_locked(self, rt: RunRuntime, annotator: str) -> Pending:
        """``next_pair`` with ``rt.lock`` held by the caller; the write is queued (see ``wait``)."""
        if not rt.comps or rt.comps[OVERALL].finished:
            return Pending(None, lambda _: None)
        now = _now()
        dead = self._sweep_leases(rt, now)
        live = self._live_leases(rt, now)
        held = next((le for le in live if le.annotator == annotator), None)
        if held is not None:   # a retried `next` gets the same lease back
            tail = rt.tail if rt.tail is not None and not rt.tail.done() else None
            return Pending(tail, lambda _: self._lease_view(rt, held))
        leased: dict[int, int] = {}
        for le in live:
            leased[le.idx] = leased.get(le.idx, 0) + 1
        k = rt.required

        def eligible(idx: int) -> bool:
            anns = rt.labels.get(idx, {})
            return annotator not in anns and len(anns) + leased.get(idx, 0) < k

        chosen = None
        for comp in rt.comps.values():
            if comp.finished and comp is not rt.comps[OVERALL]:
                continue
            for idx in comp.pending_items():
                if eligible(idx):
                    chosen = idx
                    break
            if chosen is not None:
                break
        drew = False
        if chosen is None:
            for comp in rt.comps.values():
                if comp.finished:
                    continue
                for _ in range(8):
                    new = self._next_items(rt, comp, 1)
                    if not new:
                        break
                    drew = True
                    # labels given before the draw (several annotators, webhooks) are fed now
                    self._feed(rt, new[0])
                    if new[0] in comp.labels:
                        continue
                    if eligible(new[0]):
                        chosen = new[0]
                        break
                if chosen is not None:
                    break
        if chosen is None:
            if not drew:
                if dead:
                    self._enqueue(rt, release=dead)
                return Pending(None, lambda _: None)
            event = self._decided_event(rt)
            fut = self._enqueue(rt, meta=rt.meta if event else None, release=dead)
            return Pending(fut, lambda _: self._send_event(event))
        le = Lease(uuid.uuid4().hex, chosen, annotator, now + float(rt.meta["lease_ttl_s"]))
        # expired leases on this pair are superseded: the pair is someone else's now
        superseded = [lid for lid, old in rt.leases.items() if old.idx == chosen and old.expires <= now]
        # the pair's texts come back from the same transaction that stores the lease (one round trip)
        fut = self._enqueue(rt, lease=(le.lease_id, le.to_dict()), get_pair=le.idx, release=dead + superseded)
        for lid in superseded:
            del rt.leases[lid]
        rt.leases[le.lease_id] = le
        if self.metrics:
            self.metrics.leases.inc()
        view = self._lease_view(rt, le, {"id": rt.pair_ids[le.idx], "prompt": "", "base": "", "tuned": "",
                                         "tuned_left": True})

        def finish(pair: dict | None) -> dict:
            assert pair is not None
            left, right = (pair["tuned"], pair["base"]) if pair["tuned_left"] else (pair["base"], pair["tuned"])
            view.update(prompt=pair["prompt"], left=left, right=right)
            return view

        return Pending(fut, finish)

    def _lease_view(self, rt: RunRuntime, le: Lease, pair: dict | None = None) -> dict:
        if pair is None:
            pair = self.store.get_pair(rt.rid, le.idx)
        assert pair is not None
        left, right = (pair["tuned"], pair["base"]) if pair["tuned_left"] else (pair["base"], pair["tuned"])
        return {"pair_id": pair["id"], "lease_id": le.lease_id, "lease_expires_at": le.expires,
                "prompt": pair["prompt"], "left": left, "right": right, "criteria": rt.criteria,
                "progress": {"labelled_by_you": rt.per_annotator.get(le.annotator, 0),
                             "labels": len(rt.comps[OVERALL].labels) if rt.comps else 0,
                             "budget": rt.meta["budget"]}}

    def _feed(self, rt: RunRuntime, idx: int) -> bool:
        """Offer pair idx's mean verdict to every comparison that lacks it and has enough labels. Returns True
        if the overall comparison now has pair idx labelled."""
        anns = rt.labels.get(idx, {})
        for name, comp in rt.comps.items():
            given = [r["y"] if name == OVERALL else (r.get("criteria") or {}).get(name) for r in anns.values()]
            ys: list[float] = [y for y in given if y is not None]
            if len(ys) >= rt.required and idx not in comp.labels:
                y = _mean(ys)
                if offer_label(comp, idx, y):
                    rt.ops.append(["offer", name, idx, y])
        ov = rt.comps.get(OVERALL)
        return ov is not None and idx in ov.labels

    def submit_label(self, rid: str, label: dict) -> dict:
        """Store one annotator's verdict. Idempotent per (pair_id, annotator)."""
        return self.route("submit_label", rid, label)

    def _local_submit_label(self, rt: RunRuntime, label: dict) -> dict:
        with rt.lock:
            p = self.submit_label_locked(rt, label)
        return self.wait(p)

    def submit_label_locked(self, rt: RunRuntime, label: dict) -> Pending:
        """``submit_label`` with ``rt.lock`` held by the caller; the write is queued (see ``wait``)."""
        rid = rt.rid
        pid, ann = label["pair_id"], label["annotator"]
        if pid not in rt.pair_index:
            raise NotFound(f"pair_id {pid!r} is not a pair of run {rid}; use the pair_id that "
                           "GET /v1/runs/{id}/next returned", "pair_id")
        idx, tuned_left = rt.pair_index[pid]
        crit = label.get("criteria") or {}
        for c, v in crit.items():
            if c not in rt.criteria:
                raise BadInput(f"criterion {c!r} is not one of this run's criteria {rt.criteria}",
                               f"criteria.{c}")
            if v not in VERDICTS:
                raise BadInput(f"verdict {v!r} must be one of {', '.join(VERDICTS)}", f"criteria.{c}")
        existing = rt.labels.get(idx, {}).get(ann)
        if existing is not None:
            # answered once the first copy (possibly still queued) is stored
            res = self._label_result(rt, pid, duplicate=True)
            tail = rt.tail if rt.tail is not None and not rt.tail.done() else None
            return Pending(tail, lambda _: res)
        now = _now()
        self._check_may_label(rt, idx, ann, label, now)
        rec = {"verdict": label["verdict"], "y": label_from_verdict(label["verdict"], tuned_left),
               "criteria": {c: label_from_verdict(v, tuned_left) for c, v in crit.items()},
               "raw_criteria": crit, "at": _now(), "source": label.get("source", "api")}
        n_after = len(rt.labels.get(idx, {})) + 1
        # this annotator's leases on the pair; once the pair has its k labels, everyone's
        release = [l_id for l_id, le in rt.leases.items()
                   if le.idx == idx and (le.annotator == ann or n_after >= rt.required)]
        release += self._sweep_leases(rt, now)
        try:
            rt.labels.setdefault(idx, {})[ann] = rec
            if idx < rt.meta["n_active"]:
                self._feed(rt, idx)
            event = self._decided_event(rt)
            fut = self._enqueue(rt, label=(idx, ann, rec), release=release, meta=rt.meta if event else None)
        except Exception:
            self.forget(rid)   # the stored state is the truth; memory is rebuilt from it
            raise
        for l_id in release:
            rt.leases.pop(l_id, None)
        rt.n_annotations += 1
        rt.per_annotator[ann] = rt.per_annotator.get(ann, 0) + 1
        if self.metrics:
            self.metrics.labels.inc()
        res = self._label_result(rt, pid, duplicate=False)

        def finish(_: Any) -> dict:
            self._send_event(event)
            return res

        return Pending(fut, finish)

    def _check_may_label(self, rt: RunRuntime, idx: int, ann: str, label: dict, now: float) -> None:
        """Refuse (changing nothing) a new label that does not come from a lease holder or, for an annotation
        tool, for a pair the sampler drew that still needs it (module docstring, "Label intake")."""
        pid = rt.pair_ids[idx]
        others = len(rt.labels.get(idx, {}))
        if others >= rt.required:
            raise Conflict(f"pair {pid!r} already has its {rt.required} label(s); this label was not stored. "
                           "Ask GET /v1/runs/{id}/next for another pair", "pair_id")
        source = label.get("source", "api")
        if source != "api":
            drawn = any(idx in comp.pending_items() for comp in rt.comps.values())
            if not drawn:
                raise Conflict(f"pair {pid!r} was not handed out for labelling (import the tasks/records that "
                               "tiebreak exported; it exports the pairs the sampler drew)", "pair_id")
            held = sum(1 for le in self._live_leases(rt, now) if le.idx == idx and le.annotator != ann)
            if others + held >= rt.required:
                raise Conflict(f"pair {pid!r} is leased to another annotator; this label was not stored",
                               "pair_id")
            return
        lid = label.get("lease_id")
        grace = self._grace_s(rt)
        if lid is not None:
            le = rt.leases.get(lid)
            if le is None or le.expires + grace <= now:
                raise Conflict(f"lease_id {lid!r} is not a live lease of run {rt.rid} (unknown, expired past its "
                               "grace, or the pair was handed to someone else); this label was not stored. "
                               "Ask GET /v1/runs/{id}/next for a pair", "lease_id")
            if le.idx != idx:
                raise BadInput(f"lease_id {lid!r} leases pair {rt.pair_ids[le.idx]!r}, not {pid!r}; send the "
                               "pair_id and lease_id from the same `next` response", "lease_id")
            if le.annotator != ann:
                raise Forbidden(f"lease_id {lid!r} is held by another annotator, not {ann!r}", "lease_id")
            return
        if not any(le.idx == idx and le.annotator == ann and le.expires + grace > now for le in rt.leases.values()):
            raise Conflict(f"annotator {ann!r} holds no lease on pair {pid!r}; labels are accepted for pairs "
                           "handed out by GET /v1/runs/{id}/next (send its lease_id); this label was not stored",
                           "lease_id")

    def _label_result(self, rt: RunRuntime, pid: str, duplicate: bool) -> dict:
        st = rt.comps[OVERALL].status() if rt.comps else None
        return {"accepted": True, "duplicate": duplicate, "pair_id": pid,
                "labels": st.labels if st else 0, "decision": st.decision.value if st else "running"}

    @staticmethod
    def _next_items(rt: RunRuntime, comp: Comparison, k: int) -> list[int]:
        name = next(n for n, c in rt.comps.items() if c is comp)
        rt.ops.append(["next", name, k])
        return comp.next_items(k)

    def _enqueue(self, rt: RunRuntime, *, snapshot: bool = False, get_pair: int | None = None,
                 **kw: Any) -> Future:
        """Queue the sampler's new operations (an append-only log) with the label/lease as one write (call
        under ``rt.lock``); the returned future resolves once it is stored (see the module docstring).

        The sampler is deterministic given its state (its rng included), so snapshot + replay of the logged
        operations rebuilds it exactly; a snapshot of every comparison is written once the log since the
        last one grows past max(200, labels / 2) operations (amortised O(1) per label), or when ``snapshot``.
        The write carries the run's next sequence number and our ownership value (``RedisStore.apply``)."""
        if rt.broken is not None:
            raise rt.broken
        ops = [json.dumps(o) for o in rt.ops]
        n_labels = max((len(c.labels) for c in rt.comps.values()), default=0)
        states = None
        total = rt.ops_total + len(ops)
        if rt.comps and (snapshot or total - rt.ops_at_snapshot > max(200, n_labels // 2)):
            states = {n: c.to_json(include_votes=False) for n, c in rt.comps.items()}
            states["_ops_at"] = str(total)
        meta = kw.pop("meta", None)
        outbox, rt.outbox = rt.outbox, []
        cmds = self.store.run_cmds(rt.rid, {"states": states, "ops": ops, "meta": json.dumps(meta) if meta else None,
                                            "outbox": outbox, **kw})
        fut: Future = Future()
        self._start_writer()
        self._wq.put((rt, (rt.rid, rt.owner, rt.seq, cmds, get_pair), fut))
        rt.seq += 1
        rt.tail = fut
        rt.ops.clear()
        rt.ops_total = total
        if states is not None:
            rt.ops_at_snapshot = total
        return fut

    def _commit(self, rt: RunRuntime, **kw: Any) -> Any:
        """Queue a write and wait until it is stored (under ``rt.lock``: for the rarer, synchronous paths)."""
        return self._enqueue(rt, **kw).result()

    def _flush(self, rt: RunRuntime) -> None:
        """Wait until the run's queued writes are stored (under ``rt.lock``, before writing directly)."""
        if rt.tail is not None:
            rt.tail.result()

    @staticmethod
    def wait(p: Pending) -> Any:
        return p.finish(p.fut.result() if p.fut is not None else None)

    def _start_writer(self) -> None:
        if self._writer is None:
            with self._lock:
                if self._writer is None:
                    t = threading.Thread(target=self._write_loop, name="tiebreak-writer", daemon=True)
                    t.start()
                    self._writer = t

    def _write_loop(self) -> None:
        while True:
            batch = [self._wq.get()]
            while len(batch) < 256:
                try:
                    batch.append(self._wq.get_nowait())
                except queue.Empty:
                    break
            live = []
            for item in batch:
                rt, _, fut = item
                if rt.broken is not None:
                    fut.set_exception(rt.broken)
                else:
                    live.append(item)
            if not live:
                continue
            results: list[tuple[str, dict | None] | Exception]   # per write: its answer, or why it failed
            try:
                results = list(self.store.apply([g for _, g, _ in live]))
            except Exception as e:  # noqa: BLE001 - one bad write must not fail the others: one by one
                log.warning("write of %d queued change(s) failed (%s: %s); writing them one by one",
                            len(live), type(e).__name__, e)
                results = []
                for _, g, _ in live:
                    try:   # idempotent: a write of the batch that was stored after all is answered "dup"
                        results.append(self.store.apply([g])[0])
                    except Exception as e1:  # noqa: BLE001 - this write's waiter gets the error
                        results.append(e1)
            for (rt, _, fut), res in zip(live, results, strict=True):
                if isinstance(res, Exception):
                    log.error("write to run %s failed: %s: %s", rt.rid, type(res).__name__, res)
                    self._drop(rt, res)
                    fut.set_exception(res)
                elif res[0] in ("ok", "dup"):
                    fut.set_result(res[1])
                else:
                    err = OwnershipLost(f"run {rt.rid} is now served by another replica ({res[0]} write, "
                                        "nothing stored); retry")
                    log.warning("write to run %s refused: %s", rt.rid, res[0])
                    self._drop(rt, err)
                    fut.set_exception(rt.broken or err)

    def _decided_event(self, rt: RunRuntime) -> tuple[dict, str | None] | None:
        """The run.decided webhook payload when the overall verdict just became final (flag set in meta; the
        caller writes meta with the change and sends the event once stored)."""
        ov = rt.comps.get(OVERALL)
        if ov is not None and ov.decision.final and not rt.meta.get("decided_notified"):
            rt.meta["decided_notified"] = True
            st, url = self._status(rt), rt.meta.get("webhook_url") or self.webhook_url
            if url:   # at-least-once: the outbox entry is written with the decision (services/webhooks.py)
                rt.outbox.append(outbox_entry("run.decided", st, url))
            return st, rt.meta.get("webhook_url")
        return None

    def _send_event(self, event: tuple[dict, str | None] | None) -> None:
        if event is not None and self.notify is not None:
            self.notify("run.decided", *event)

    # ---------------------------------------------------------------------------------------- views
    def status(self, rid: str) -> dict:
        return self.route("status", rid)

    def _local_status(self, rt: RunRuntime) -> dict:
        with rt.lock:
            return self._status(rt)

    def _status(self, rt: RunRuntime) -> dict:
        meta = rt.meta
        out: dict[str, Any] = {
            "run_id": rt.rid, "name": meta["name"], "status": meta["status"], "n_pairs": len(rt.pair_ids),
            "votes": rt.n_voted, "labels": 0, "annotations": rt.n_annotations, "estimate": None,
            "interval": [0.0, 1.0], "alpha": meta["alpha"], "margin": meta["margin"], "budget": meta["budget"],
            "decision": "running", "method": meta.get("method"), "judges": meta["judge_names"],
            "labels_per_pair": rt.required, "pending": 0, "criteria": {}, "progress": meta.get("progress") or {},
            "error": meta.get("error"), "created_at": meta["created_at"],
            "alpha_split": f"bonferroni over {1 + len(rt.criteria)} comparisons" if rt.criteria else None,
            "slices": {}, "slice_warnings": list(meta.get("slice_warnings") or []),
            "finished": bool(rt.comps) and all(c.finished for c in rt.comps.values()),
        }
        # progress of the machines and the humans (a streaming run labels while the first two still grow)
        progress = meta.get("progress") or {}
        out["generated"] = len(rt.pair_ids) if rt.pair_ids else int(progress.get("pairs_generated", 0))
        out["judged"] = rt.n_voted if meta["judge_names"] else 0
        out["progress"] = dict(progress)
        if meta.get("slices"):
            out["alpha_split"] = alpha_split_text(meta["alpha"], len(meta["slices"]), 1 + len(rt.criteria))
        for name, comp in rt.comps.items():
            s = comp.status()
            d = {"labels": s.labels, "estimate": s.estimate, "interval": [s.lower, s.upper], "alpha": s.alpha,
                 "decision": s.decision.value, "method": s.method, "pending": s.pending,
                 "pool_version": s.pool_version,
                 "slices": {k: v.to_dict() for k, v in comp.slice_statuses().items()}}
            if name == OVERALL:
                out.update(d)
                out["progress"]["labels"] = s.labels   # the overall verdict's labels, as "labels" above
            else:
                out["criteria"][name] = d
        return out

    def report_html(self, rid: str) -> str:
        return self.route("report_html", rid)

    def _local_report_html(self, rt: RunRuntime) -> str:
        from services.report_page import render_owned

        return render_owned(self, rt)

    def report_data(self, rid: str) -> dict:
        return self.route("report_data", rid)

    def _local_report_data(self, rt: RunRuntime) -> dict:
        with rt.lock:
            st = self._status(rt)
            ov = rt.comps.get(OVERALL)
            st["trajectory"] = [list(r) for r in ov.trajectory] if ov else []
            cal = ov.calibration if ov else None
            st["calibration"] = {"n_labels": cal.n_labels, "intercept": cal.intercept, "coef": list(cal.coef)} \
                if cal is not None else None
            return st

    def list_runs(self) -> list[dict]:
        out = []
        for rid in self.store.run_ids():
            m = self.store.get_meta(rid)
            if m:
                out.append({"run_id": rid, "name": m["name"], "status": m["status"], "created_at": m["created_at"]})
        return out

    # -------------------------------------------------------------------------- annotation-tool queues
    def draw_batch(self, rid: str, k: int) -> list[tuple[dict, float, dict | None]]:
        """Up to k pairs to label in priority order (pending draws first, then new draws), without leases —
        for annotation tools that keep their own queue. Returns (pair, priority in (0, 1], votes)."""
        return self.route("draw_batch", rid, k)

    def _local_draw_batch(self, rt: RunRuntime, k: int) -> list:
        rid = rt.rid
        with rt.lock:
            if not rt.comps or rt.comps[OVERALL].finished:
                return []
            order: list[int] = []
            for comp in rt.comps.values():
                if not comp.finished:
                    order += [i for i in comp.pending_items() if len(rt.labels.get(i, {})) < rt.required]
            drew = False
            ov = rt.comps[OVERALL]
            while len(dict.fromkeys(order)) < k and not ov.finished:
                new = self._next_items(rt, ov, min(k, 256))
                if not new:
                    break
                drew = True
                for i in new:
                    self._feed(rt, i)
                order += [i for i in new if i not in ov.labels]
            if drew:
                self._commit(rt)
            idxs = list(dict.fromkeys(order))[:k]
            pairs = self.store.get_pairs(rid, idxs)
            votes = self.store.all_votes(rid) if rt.meta["judge_names"] else {}
            n = max(len(idxs), 1)
            return [(p, 1.0 - r / n, votes.get(i)) for r, (i, p) in enumerate(zip(idxs, pairs, strict=True))
                    if p is not None]
