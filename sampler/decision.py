"""Decision rule on an anytime-valid interval, and how alpha is divided.

Given a (1 - alpha) confidence sequence for theta, the preference rate of tuned over base, reported as the
open interval (lower_t, upper_t) -- theta > lower_t and theta < upper_t, the bounds being candidate values
that the CS has *excluded* (sampler.confseq) --
    better      if lower_t >= 1/2   (1/2 excluded: theta > 1/2; P(false "better") <= alpha when theta <= 1/2)
    worse       if upper_t <= 1/2
    equivalent  if 1/2 - margin <= lower_t and upper_t <= 1/2 + margin   (margin > 0 only)
    undecided   if the label budget is spent (or the pool is exhausted) first
    running     otherwise.
Because the CS covers theta at every time simultaneously, these hold under optional stopping.

Several criteria (overall, accuracy, ...) split alpha by Bonferroni: alpha_c = alpha / n_criteria, so the
probability that *any* criterion's verdict is wrong is <= alpha (sampler.family: the same CSs read with Holm's
step-down, never later than Bonferroni). A sequence of checkpoints spends alpha with
alpha_k = alpha * 6 / (pi^2 k^2), k = 1, 2, ...  (sum_k 6/(pi^2 k^2) = 1), so the family-wise error of every
better/worse verdict of an experiment, however many checkpoints arrive, stays <= alpha.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum


class Decision(StrEnum):
    RUNNING = "running"
    BETTER = "better"
    WORSE = "worse"
    EQUIVALENT = "equivalent"
    UNDECIDED = "undecided"

    @property
    def final(self) -> bool:
        return self is not Decision.RUNNING


# better, worse, equivalent, undecided. Members of a StrEnum hash and compare as their values, so the decision
# strings of a JSON status test against it directly ("better" in FINAL_DECISIONS).
FINAL_DECISIONS = frozenset(d for d in Decision if d.final)


@dataclass(frozen=True)
class DecisionRule:
    margin: float = 0.0
    budget: int | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.margin < 0.5:
            raise ValueError("margin must lie in [0, 0.5)")
        if self.budget is not None and self.budget < 1:
            raise ValueError("budget must be a positive number of labels")

    def decide(self, lower: float, upper: float, labels: int, exhausted: bool = False,
               closed: bool = False) -> Decision:
        """closed=False: theta in the open (lower, upper); closed=True: theta in [lower, upper], so a bound
        equal to 1/2 (or 1/2 +- margin) does not exclude it."""
        beyond = (lambda a, b: a > b) if closed else (lambda a, b: a >= b)
        if beyond(lower, 0.5):
            return Decision.BETTER
        if beyond(0.5, upper):
            return Decision.WORSE
        if self.margin > 0 and beyond(lower, 0.5 - self.margin) and beyond(0.5 + self.margin, upper):
            return Decision.EQUIVALENT
        if exhausted or (self.budget is not None and labels >= self.budget):
            return Decision.UNDECIDED
        return Decision.RUNNING


def split_alpha(alpha: float, n_criteria: int) -> float:
    """Bonferroni: each of n criteria is tested at alpha / n."""
    if n_criteria < 1:
        raise ValueError("n_criteria must be >= 1")
    return alpha / n_criteria


def spend_alpha(alpha: float, k: int) -> float:
    """alpha spent on the k-th look (k = 1, 2, ...): alpha * 6 / (pi^2 k^2); sums to alpha over all k."""
    if k < 1:
        raise ValueError("k counts from 1")
    return alpha * 6.0 / (math.pi**2 * k * k)
