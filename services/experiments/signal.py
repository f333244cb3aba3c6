"""The stop-training signal: a pure function of the checkpoints' verdicts (see services/experiments/__init__.py
for the rule). No I/O: the service feeds it ``CheckpointVerdict``s built from its runs' statuses."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from tiebreak.sampler.decision import FINAL_DECISIONS, Decision
from tiebreak.services.experiments.errors import ExperimentError

FINAL = FINAL_DECISIONS
REASONS = ("target", "regression", "plateau", "budget")


@dataclass(frozen=True)
class ComparisonView:
    """What the signal needs from one run (a GET /v1/runs/{id} subset)."""
    run_id: str
    decision: str = Decision.RUNNING.value
    estimate: float = 0.5
    lower: float = 0.0
    upper: float = 1.0
    labels: int = 0
    alpha: float = 0.05
    against: str = "base"          # the reference side: "base" or a checkpoint name
    slices: dict | None = None     # per-slice verdicts of the run (prompts with slices), as in its status

    def to_dict(self) -> dict:
        d = {"run_id": self.run_id, "decision": self.decision, "estimate": self.estimate, "lower": self.lower,
             "upper": self.upper, "labels": self.labels, "alpha": self.alpha, "against": self.against}
        if self.slices:
            d["slices"] = self.slices
        return d

    @classmethod
    def from_status(cls, run_id: str, st: dict, against: str) -> ComparisonView:
        iv = st.get("interval") or [0.0, 1.0]
        est = st.get("estimate")
        return cls(run_id, str(st.get("decision") or Decision.RUNNING), 0.5 if est is None else float(est),
                   float(iv[0]), float(iv[1]), int(st.get("labels", 0)), float(st.get("alpha", 0.05)), against,
                   st.get("slices") or None)


@dataclass(frozen=True)
class CheckpointVerdict:
    checkpoint: str
    index: int                           # k, from 1
    alpha: float                         # alpha_k spent on this checkpoint
    vs_base: ComparisonView
    vs_best: ComparisonView | None = None  # None: the best was the base when it arrived

    @property
    def reference(self) -> ComparisonView:
        return self.vs_best if self.vs_best is not None else self.vs_base

    @property
    def decision(self) -> str:
        """Its verdict against the best-so-far: running / better / worse / equivalent / undecided."""
        return self.reference.decision

    def to_dict(self) -> dict:
        return {"checkpoint": self.checkpoint, "index": self.index, "alpha": self.alpha,
                "vs_base": self.vs_base.to_dict(), "vs_best": self.reference.to_dict(),
                "compared_to": self.reference.against, "decision": self.decision,
                "labels": self.vs_base.labels + (self.vs_best.labels if self.vs_best else 0)}


@dataclass(frozen=True)
class Signal:
    stop: bool
    reason: str | None
    best_checkpoint: str | None
    checkpoints: list[dict] = field(default_factory=list)
    message: str = ""
    labels: int = 0

    def to_dict(self) -> dict:
        return {"stop": self.stop, "reason": self.reason, "best_checkpoint": self.best_checkpoint,
                "checkpoints": self.checkpoints, "message": self.message, "labels": self.labels}

    def key(self) -> tuple:
        return (self.stop, self.reason, self.best_checkpoint)


@dataclass(frozen=True)
class SignalRule:
    patience: int = 2
    target_margin: float | None = None
    budget: int | None = None
    undecided_is_plateau: bool = True
    protect_slices: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "protect_slices", tuple(self.protect_slices))
        if not isinstance(self.patience, int) or self.patience < 1:
            raise ExperimentError("patience", f"must be an integer >= 1 (got {self.patience!r})")
        if self.target_margin is not None and not 0 <= self.target_margin < 0.5:
            raise ExperimentError("target_margin", f"must lie in [0, 0.5) (got {self.target_margin!r})")
        if self.budget is not None and self.budget < 1:
            raise ExperimentError("budget", f"must be a positive number of labels (got {self.budget!r})")

    def evaluate(self, checkpoints: Sequence[CheckpointVerdict], labels: int | None = None) -> Signal:
        cks = sorted(checkpoints, key=lambda c: c.index)
        rows = [c.to_dict() for c in cks]
        if labels is None:
            labels = sum(r["labels"] for r in rows)
        best_i = -1
        for i, c in enumerate(cks):
            if c.decision == Decision.BETTER and not self._worse_on_protected(c):
                best_i = i
        best = cks[best_i].checkpoint if best_i >= 0 else None
        best_name = best or "the base"

        def out(stop: bool, reason: str | None, msg: str) -> Signal:
            return Signal(stop, reason, best, rows, msg, labels)

        if self.target_margin is not None:
            for c in cks:
                if c.vs_base.lower > 0.5 + self.target_margin:
                    return out(True, "target", f"{c.checkpoint} is better than the base by >= {self.target_margin:g} "
                                               f"(lower bound {c.vs_base.lower:.3f} > {0.5 + self.target_margin:.3f})")
        guarded = [c for c in cks if self._protected_verdicts(c)]
        if guarded and self._worse_on_protected(guarded[-1]):
            c = guarded[-1]
            return out(True, "slice-regression", f"{c.checkpoint} is worse than the base on protected slice(s) "
                                                 f"{', '.join(self._worse_on_protected(c))}")
        plateau_set = {Decision.EQUIVALENT, Decision.WORSE} | ({Decision.UNDECIDED} if self.undecided_is_plateau
                                                              else set())
        after = [c for c in cks[best_i + 1:] if c.decision in FINAL]
        last = after[-self.patience:]
        if len(last) == self.patience and all(c.decision in plateau_set for c in last):
            names = ", ".join(f"{c.checkpoint}: {c.decision}" for c in last)
            if all(c.decision == Decision.WORSE for c in last):
                return out(True, "regression", f"the last {self.patience} checkpoint(s) are worse than {best_name} ({names})")
            return out(True, "plateau", f"the last {self.patience} checkpoint(s) are not better than {best_name} ({names})")
        if self.budget is not None and labels >= self.budget:
            return out(True, "budget", f"{labels} human labels used (budget {self.budget})")
        running = sum(1 for c in cks if c.decision not in FINAL)
        return out(False, None, f"{len(cks)} checkpoint(s), {running} running; best: {best_name}")

    def _protected_verdicts(self, c: CheckpointVerdict) -> dict[str, str]:
        """The final verdicts vs the base of c's protected slices (running ones left out)."""
        sl = c.vs_base.slices or {}
        return {s: sl[s]["decision"] for s in self.protect_slices
                if s in sl and sl[s].get("decision") in FINAL}

    def _worse_on_protected(self, c: CheckpointVerdict) -> list[str]:
        return [s for s, d in self._protected_verdicts(c).items() if d == Decision.WORSE]
