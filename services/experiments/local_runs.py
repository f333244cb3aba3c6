"""``LocalRuns``: runs held in memory over sampler.engine.Comparison (the RunBackend of the replay benchmark,
the tests, and experiments without the service)."""

from __future__ import annotations

import math
import threading
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

Voter = Callable[[list[dict]], list[dict[str, float]]]   # pairs (with base_ref/tuned_ref) -> judge votes per pair


class LocalRuns:
    """Runs held in memory over sampler.engine.Comparison: the replay benchmark, tests, and a service without
    Redis. Pairs carry ``judge_votes`` or a ``voter`` fills them (e.g. recorded verdicts, or a judges.Jury)."""

    def __init__(self, voter: Voter | None = None, seed: int | None = None, method: str | None = None,
                 **config: Any) -> None:
        self.voter = voter
        self.method = method
        self.config = config             # extra ComparisonConfig fields (e.g. grid_resolution)
        self._rng = np.random.default_rng(seed)
        self._runs: dict[str, dict] = {}
        self._lock = threading.RLock()

    def create_run(self, spec: dict) -> str:
        from tiebreak.sampler.engine import Comparison, ComparisonConfig
        pairs = [dict(p) for p in spec["pairs"]]
        meta = spec.get("experiment") or {}
        for p in pairs:
            p.setdefault("base_ref", meta.get("base_ref"))
            p.setdefault("tuned_ref", meta.get("tuned_ref"))
        if spec.get("judges") and self.voter is not None and any("judge_votes" not in p for p in pairs):
            for p, v in zip(pairs, self.voter(pairs), strict=True):
                p.setdefault("judge_votes", v)
        names = sorted({j for p in pairs for j in (p.get("judge_votes") or {})})
        votes = np.array([[(p.get("judge_votes") or {}).get(j, math.nan) for j in names] for p in pairs],
                         dtype=float).reshape(len(pairs), len(names))
        method = spec.get("method") or self.method or ("active" if names else "classical")
        cfg = ComparisonConfig(alpha=spec.get("alpha", 0.05), margin=spec.get("margin", 0.0),
                               budget=spec.get("budget"), method=method, **self.config)
        rng = np.random.default_rng(self._rng.integers(2**63))
        with self._lock:
            prior = self._prior(spec.get("calibration_from") or [], names) if method != "classical" else None
            run_id = "run_" + uuid.uuid4().hex[:12]
            self._runs[run_id] = {"spec": {k: v for k, v in spec.items() if k != "pairs"}, "pairs": pairs,
                                  "names": names, "votes": votes,
                                  "cmp": Comparison(votes if names else None, n_items=len(pairs), config=cfg, rng=rng,
                                                    prior=prior)}
        return run_id

    def _prior(self, sources: list[str], names: list[str]) -> Any:
        """The calibration carried from runs ``sources`` (as POST /v1/runs calibration_from, services/runs/
        prior.py): sampler.calibration.prior_calibration on their labelled pairs, in pair order. None: none."""
        from tiebreak.sampler.calibration import prior_calibration
        from tiebreak.services.errors import BadInput

        if not sources:
            return None
        if len(set(sources)) != len(sources):
            raise BadInput("calibration_from names a run twice; name each run once", "calibration_from")
        xs, ys, groups = [], [], []
        for k, rid in enumerate(sources):
            r = self._runs.get(rid)
            if r is None:
                raise BadInput(f"run {rid!r} named in calibration_from does not exist", f"calibration_from.{k}")
            if sorted(r["names"]) != sorted(names) or not names:
                raise BadInput(f"run {rid!r} was judged by {r['names']}, this run by {names}: a calibration "
                               "carries only between runs with the same judges", f"calibration_from.{k}")
            order = [r["names"].index(n) for n in names]
            labels = r["cmp"].labels
            if not labels:
                raise BadInput(f"run {rid!r} has no labels yet", f"calibration_from.{k}")
            for i in sorted(labels):
                xs.append(r["votes"][i, order])
                ys.append(labels[i])
                groups.append(k)
        return prior_calibration(np.asarray(xs), np.asarray(ys), groups=np.asarray(groups))

    def run_status(self, run_id: str) -> dict:
        with self._lock:
            r = self._runs[run_id]
            st = r["cmp"].status()
        cal = r["cmp"].prior
        return {"run_id": run_id, "calibration_prior": None if cal is None else {
                    "from": list(r["spec"].get("calibration_from") or []), "labels": cal.n_labels},
                "n_pairs": st.n_items, "labels": st.labels, "estimate": st.estimate,
                "interval": [st.lower, st.upper], "alpha": st.alpha, "decision": st.decision.value,
                "pending": st.pending}

    def pair(self, run_id: str, index: int) -> dict:
        return self._runs[run_id]["pairs"][index]

    def next(self, run_id: str, k: int = 1) -> list[int]:
        with self._lock:
            c = self._runs[run_id]["cmp"]
            pend = c.pending_items()
            return pend[:k] if pend else c.next_items(k)

    def label(self, run_id: str, index: int, y: float) -> None:
        with self._lock:
            self._runs[run_id]["cmp"].record_label(index, y)

    def open_runs(self) -> list[str]:
        with self._lock:
            return [rid for rid, r in self._runs.items() if not r["cmp"].decision.final]

    def annotate(self, annotator: Callable[[dict], float], run_ids: Sequence[str] | None = None,
                 max_labels: int | None = None) -> int:
        """Answer every open run's queue with ``annotator(pair) -> y`` until all are decided; returns labels."""
        n = 0
        while True:
            ids = [r for r in (run_ids or self.open_runs()) if not self._runs[r]["cmp"].decision.final]
            progressed = False
            for rid in ids:
                items = self.next(rid, 1)
                if not items:
                    continue
                self.label(rid, items[0], annotator(self.pair(rid, items[0])))
                n += 1
                progressed = True
                if max_labels is not None and n >= max_labels:
                    return n
            if not progressed:
                return n
