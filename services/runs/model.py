"""The in-memory shape of a run and the small values every part of ``services.runs`` passes around.

Owns: ``RunRuntime`` (one owned run in memory: its comparisons, pair index, labels, leases, write bookkeeping),
``Lease``, ``Pending`` (a change made in memory whose write is queued), the errors of run ownership, and
``offer_label`` (how a final label reaches a comparison). No I/O here: the parts that read and write Redis
(``writer``, ``loader``, ``services.store``) and the parts that change a run (``pool``, ``leases``,
``intake``) all work on these objects, so they live apart from any of them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from tiebreak.sampler.engine import Comparison
from tiebreak.services.errors import ServiceError, Unavailable, error_item

if TYPE_CHECKING:
    from tiebreak.sampler.family import ComparisonFamily

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
    family: ComparisonFamily | None = None          # one draw sequence (services.runs.shared_draws); comps is
                                                   # then its dict. None: a run stored before it (old path)
    labels: dict[int, dict[str, dict]] = field(default_factory=dict)   # idx -> annotator -> record
    leases: dict[str, Lease] = field(default_factory=dict)
    n_voted: int = 0
    n_annotations: int = 0
    per_annotator: dict[str, int] = field(default_factory=dict)
    lock: threading.RLock = field(default_factory=threading.RLock)
    ops: list = field(default_factory=list)        # sampler operations not yet written (see RunWriter)
    ops_total: int = 0                             # operations in Redis (tb:run:{rid}:ops)
    ops_at_snapshot: int = 0                       # operations already contained in the stored snapshots
    tail: Future | None = None                     # the run's last queued write (see RunWriter.enqueue)
    broken: BaseException | None = None            # a write failed: this copy is stale, never written again
    seq: int = 0                                   # the run's write sequence number for the next write
    owner: str = ""                                # our ownership lease value ("{fence} {replica} {url}")
    owned_until: float = 0.0                       # monotonic time until which the lease surely holds
    last_used: float = field(default_factory=time.monotonic)
    outbox: list = field(default_factory=list)      # webhook outbox entries for the next write
    ungenerated: set[int] = field(default_factory=set)  # a generate run's pairs whose outputs are not made yet

    @property
    def criteria(self) -> list[str]:
        return list(self.meta.get("criteria") or [])

    @property
    def required(self) -> int:
        return int(self.meta.get("labels_per_pair", 1))

    @property
    def finished(self) -> bool:
        """Nothing more to hand out: every question final (shared draws), else the overall comparison's."""
        if self.family is not None:
            return self.family.finished
        return OVERALL in self.comps and self.comps[OVERALL].finished

    def pending_tail(self) -> Future | None:
        """The run's last queued write while it is not stored yet (an answer that must wait for it)."""
        return self.tail if self.tail is not None and not self.tail.done() else None


def mean(xs: list[float]) -> float:
    return float(sum(xs) / len(xs))


def no_votes(n: int, width: int = 1) -> np.ndarray:
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


def feed(rt: RunRuntime, idx: int) -> bool:
    """Offer pair idx's mean verdict to every comparison that lacks it and has enough labels (logged as an
    "offer" op). Returns True if the overall comparison now has pair idx labelled. A run on one draw sequence
    takes all of them in one step (services.runs.shared_draws.feed_family)."""
    if rt.family is not None:
        from tiebreak.services.runs.shared_draws import feed_family

        return feed_family(rt, idx)
    anns = rt.labels.get(idx, {})
    for name, comp in rt.comps.items():
        given = [r["y"] if name == OVERALL else (r.get("criteria") or {}).get(name) for r in anns.values()]
        ys: list[float] = [y for y in given if y is not None]
        if len(ys) >= rt.required and idx not in comp.labels:
            y = mean(ys)
            if offer_label(comp, idx, y):
                rt.ops.append(["offer", name, idx, y])
    ov = rt.comps.get(OVERALL)
    return ov is not None and idx in ov.labels


def next_items(rt: RunRuntime, comp: Comparison, k: int) -> list[int]:
    """Draw k pairs from one of the run's comparisons (logged as a "next" op, replayed on load)."""
    name = next(n for n, c in rt.comps.items() if c is comp)
    rt.ops.append(["next", name, k])
    return comp.next_items(k)


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
        self._detail = detail if isinstance(detail, list) else [error_item([], str(detail), "RemoteError")]

    def detail(self) -> list[dict]:
        return self._detail


class OwnershipLost(Unavailable):
    """A write was refused because this replica no longer owns the run (or its copy is stale): nothing of it
    was stored; the caller retries (the run is served by its owner, or reloaded here)."""
