"""Per-slice verdicts from the overall comparison's own draw sequence.

A pool of N pairs carries tags ("slices"); a pair may be in several slices or in none. For slice s with pair
set P_s (N_s = |P_s|) the estimand is theta_s = (1/N_s) sum_{i in P_s} Y_i, the preference rate on that slice.
The overall estimand theta stays the pool mean and is computed exactly as before (sampler.engine): slices only
*read* the draws, they never change them while the overall question is open.

Observation (Horvitz-Thompson restricted to the slice, conditional on landing in it). Draw t picks I_t from the
not-yet-drawn set R_t with probability q_t(i). Let R_t^s = R_t cap P_s, n_t^s = |R_t^s| and
q_t(s) = sum_{i in R_t^s} q_t(i), all fixed before the draw (predictable). When I_t lands in s, the slice sees

    x_t^s = gbar_t^s + (Y_{I_t} - g_t(I_t)) * w_t^s(I_t),      w_t^s(i) = q_t(s) / (n_t^s q_t(i)),

with gbar_t^s the mean of the predictions g_t over R_t^s. Given the past and I_t in s, I_t = i with probability
q_t(i) / q_t(s), so E[x_t^s | past, I_t in s] = gbar_t^s + (1/n_t^s) sum_{i in R_t^s} (Y_i - g_t(i)) = mean of Y
over R_t^s. If theta_s were m, that mean would be c_t^s(m) = (N_s m - S_t^s) / n_t^s, S_t^s the labels of the
slice's pairs processed so far (the slice's own finite-population centring). The slice's capital factor is

    1 + lam_t 1{I_t in s} (x_t^s - c_t^s(m)),

whose conditional mean is 1 + lam_t q_t(s) (E[x | in s] - c) = 1 under theta_s = m: draws that miss the slice
leave its capital unchanged (factor 1), draws that hit it are a betting step of sampler.confseq's mixture CS,
so the same Ville argument gives an anytime-valid (1 - alpha_s) confidence sequence for theta_s. The bounds
lo/hi of x use the predictable max weight max_{i in R_t^s} w_t^s(i) = q_t(s) / (n_t^s min_{i in R_t^s} q_t(i)),
computed at draw time from the sampler's exact integer scores. With uniform draws w = 1 exactly: the slice sees
a plain without-replacement sample of its own pairs (Waudby-Smith & Ramdas 2020).

Predictability: the slice uses the same g_t as the overall observation of draw t (it is updated inside the
engine's processing of draw t, before the refit that uses Y_{I_t}); once the overall verdict is final g is
frozen, so any later g is still a function of labels processed before the draw.

Allocation. While the overall question is open, draws follow the overall design unchanged (its validity is
untouched). Once the overall verdict is final, the run keeps drawing only for slices still running: each draw is
uniform over U_t, the not-yet-drawn pairs of the running slices (a predictable set). Every running slice s is
then entirely inside U_t, so q_t(i | s) = 1 / n_t^s and w = 1. Slices not running at t are skipped on such a
draw (a predictable choice: factor 1). Labels of pairs outside every running slice are no longer spent.

Multiplicity. The family is the overall verdict plus one verdict per slice (per criterion when criteria exist).
Each question is tested at alpha / ((1 + K) C) (Bonferroni, ``slice_alpha``): the probability that any of
them is wrong is <= alpha by the union bound, whatever the dependence between overlapping slices
(sampler.family runs criteria and slices on one draw sequence and reads these same CSs with Holm's step-down,
which gives every verdict Bonferroni gives and more). Label noise
and pool versions are handled per slice exactly as for the overall comparison (sampler.engine docstring).

Stop rule: a run is finished when the overall verdict is final and every slice's verdict is final -- better /
worse / equivalent, or undecided when the budget is spent or the slice's pairs are all labelled at theta_s = 1/2.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tiebreak.sampler.confseq import BettingConfidenceSequence, candidate_grid, pack, unpack
from tiebreak.sampler.decision import Decision, DecisionRule
from tiebreak.sampler.policy import Draw

MAX_SLICES = 50  # a sane cap: each slice costs alpha / (1 + K) for every question


@dataclass(frozen=True)
class SliceStatus:
    name: str
    n_items: int
    labels: int          # labels of this slice's pairs that entered its confidence sequence
    estimate: float
    lower: float
    upper: float
    alpha: float
    decision: Decision

    def to_dict(self) -> dict:
        return {"n_pairs": self.n_items, "labels": self.labels, "estimate": self.estimate,
                "interval": [self.lower, self.upper], "alpha": self.alpha, "decision": self.decision.value}


def slice_alpha(alpha: float, n_slices: int, n_criteria: int = 1) -> float:
    """Bonferroni over the overall verdict plus n_slices slice verdicts, for each of n_criteria criteria."""
    if n_slices < 0 or n_criteria < 1:
        raise ValueError("n_slices must be >= 0 and n_criteria >= 1")
    return alpha / ((1 + n_slices) * n_criteria)


def alpha_split_text(alpha: float, n_slices: int, n_criteria: int = 1) -> str:
    k = (1 + n_slices) * n_criteria
    parts = f"(overall + {n_slices} slices)" + (f" x {n_criteria} criteria" if n_criteria > 1 else "")
    return f"bonferroni over {k} questions {parts}: each at alpha {alpha:g}/{k} = {alpha / k:.4g}"


def membership_matrix(slices_per_item: list[list[str] | tuple[str, ...] | None],
                      names: list[str] | None = None) -> tuple[list[str], np.ndarray]:
    """(names, member) with member[i, k] True when pair i is in slice names[k]. Names default to every slice
    present, sorted; tags of pairs that are not among `names` are ignored."""
    present = sorted({s for tags in slices_per_item for s in (tags or [])})
    names = present if names is None else list(names)
    index = {s: k for k, s in enumerate(names)}
    member = np.zeros((len(slices_per_item), len(names)), dtype=bool)
    for i, tags in enumerate(slices_per_item):
        for s in tags or []:
            if s in index:
                member[i, index[s]] = True
    return names, member


def best_case_labels(n_items: int, alpha: float, grid_resolution: int = 400, bets=None) -> int:
    """Fewest labels after which a slice of n_items pairs can exclude 1/2: every label 1, uniform draws, no
    judges. Equal to n_items when only labelling the whole slice can decide it (a warning worth giving)."""
    from tiebreak.sampler.confseq import BetSchedule

    cs = BettingConfidenceSequence(alpha, candidate_grid(grid_resolution, (0.5,)), bets or BetSchedule())
    total = 0.0
    for k in range(n_items):
        rem = n_items - k
        c = (n_items * cs.grid - total) / rem
        cs.update(1.0, c, 0.0, 1.0, (n_items / rem) ** cs.bets.growth, mean_lo=0.0, mean_hi=1.0)
        total += 1.0
        if cs.interval().lower >= 0.5:
            return k + 1
    return n_items


class SliceTracker:
    """One confidence sequence per slice, fed by a ``Comparison``'s draws (see the module docstring).

    Owned by the Comparison (``Comparison.set_slices``) and persisted inside its state.
    """

    def __init__(self, names: list[str], member: np.ndarray) -> None:
        member = np.asarray(member, dtype=bool)
        if member.ndim != 2 or member.shape[1] != len(names):
            raise ValueError("member must be (pairs x slices) with one column per slice name")
        if len(set(names)) != len(names):
            raise ValueError("slice names must be distinct")
        if len(names) > MAX_SLICES:
            raise ValueError(f"at most {MAX_SLICES} slices (got {len(names)})")
        self.names = list(names)
        self.member = member

    # ------------------------------------------------------------------------------------------- lifecycle
    def reset(self, comp) -> None:
        """Start afresh for the comparison's current pool version (its alpha, its pool)."""
        if self.member.shape[0] != comp.n_items:
            raise ValueError(f"slice membership has {self.member.shape[0]} rows, the pool {comp.n_items} pairs")
        cfg = comp.config
        if cfg.design != "without-replacement" or cfg.confidence_sequence != "betting":
            raise ValueError("slices need the without-replacement design and the betting confidence sequence")
        k = len(self.names)
        self.margin, self.budget = cfg.margin, cfg.budget
        self.alpha = comp.alpha                     # what the slice CS spends in this pool version
        # what a user is promised (the engine's convention: the question's whole alpha until pairs are added)
        self.reported_alpha = getattr(comp, "reported_alpha", comp.alpha)
        self.label_noise = cfg.label_noise
        self.cs_alpha = self.alpha * (1 - cfg.noise_alpha_share) if cfg.label_noise else self.alpha
        self.noise_alpha = self.alpha * cfg.noise_alpha_share
        grid = candidate_grid(cfg.grid_resolution, (0.5, 0.5 - cfg.margin, 0.5 + cfg.margin))
        self.cs = [BettingConfidenceSequence(self.cs_alpha, grid, cfg.bets) for _ in range(k)]
        self.growth = cfg.bets.growth
        self.sizes = self.member.sum(axis=0).astype(int)
        self.counts = np.zeros(k, dtype=int)        # processed pairs per slice
        self.sums = np.zeros(k)                     # their labels' sum S^s
        self.est = np.zeros((k, 2))                 # precision-weighted estimate: numerator, denominator
        self.done = np.zeros(comp.n_items, dtype=bool)  # pairs whose draw the tracker has processed
        self.drawn = np.zeros(comp.n_items, dtype=bool)
        self.processed = 0                          # draws processed (index into comp.draws)
        # draw-time records: (draw index, slice, weight, max weight), appended in draw order
        self.rec_draw: list[int] = []
        self.rec_slice: list[int] = []
        self.rec_weight: list[float] = []
        self.rec_max: list[float] = []
        self._rec_pos = 0
        self.decisions = [Decision.RUNNING] * k
        self.on_refit(comp)
        self.update_decisions(comp)

    # Running per-slice sums, so that a draw and a label cost O(slices of the pair), not O(N): live counts and
    # live score sums (exact: integer scores, sampler.policy), and the sum / max / min of g over each slice's
    # undrawn pairs. Max and min are recomputed at refits only: between refits pairs only leave, so the stale
    # values stay valid bounds (as the engine's g_max / g_min and the sampler's score_min). They and the g sum
    # are persisted, so a reloaded tracker continues exactly.
    def on_refit(self, comp) -> None:
        """The predictions g or the sampler's scores changed (a refit): recompute the slice summaries."""
        self._scores = comp.sampler.scores_in_use()
        live = self.member & ~self.drawn[:, None]
        self.s_min = np.where(live, self._scores[:, None], np.inf).min(axis=0) if self.member.size else \
            np.zeros(len(self.names))
        self.s_min = np.where(np.isfinite(self.s_min), self.s_min, 0.0)
        rest = self.member & ~self.done[:, None]
        g = comp.g
        self.g_sum = g @ rest if g.size else np.zeros(len(self.names))
        self.g_max = np.where(rest, g[:, None], -np.inf).max(axis=0) if g.size else np.zeros(len(self.names))
        self.g_min = np.where(rest, g[:, None], np.inf).min(axis=0) if g.size else np.zeros(len(self.names))
        self._recount()

    def _recount(self) -> None:
        alive = ~self.drawn
        self.n_live = (self.member & alive[:, None]).sum(axis=0).astype(int)
        self.w_live = (self._scores * alive) @ self.member
        self.w_all = float((self._scores * alive).sum())

    def running(self) -> list[int]:
        return [k for k, d in enumerate(self.decisions) if not d.final]

    @property
    def finished(self) -> bool:
        return not self.running()

    # ----------------------------------------------------------------------------------------------- draws
    def before_draw(self, sampler) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per slice, before the overall sampler draws: n^s, q(s), a lower bound of min_{i in R^s} q(i) (all
        predictable). q(i) = gamma/|R| + (1 - gamma) w_i / W, the sampler's mixture over its integer scores."""
        rem = sampler.remaining
        n_s = self.n_live.copy()
        if rem <= 1:
            return n_s, np.where(n_s > 0, 1.0, 0.0), np.ones(len(self.names))
        if sampler.gamma >= 1.0 or self.w_all <= 0:
            return n_s, n_s / rem, np.full(len(self.names), 1.0 / rem)
        gamma = sampler.gamma
        q_s = gamma * n_s / rem + (1 - gamma) * self.w_live / self.w_all
        q_min = gamma / rem + (1 - gamma) * self.s_min / self.w_all
        return n_s, q_s, q_min

    def after_draw(self, index: int, draw: Draw, pre: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
        n_s, q_s, q_min = pre
        for k in np.flatnonzero(self.member[draw.item]):
            if self.decisions[k].final:
                continue
            w = float(q_s[k] / (n_s[k] * draw.prob))
            wmax = max(float(q_s[k] / (n_s[k] * q_min[k])), w, 1.0)
            self._record(index, int(k), w, wmax)
        self._leave(draw.item)

    def _leave(self, item: int) -> None:
        """Pair `item` was drawn: it leaves every slice's undrawn set."""
        self.drawn[item] = True
        ks = self.member[item]
        self.n_live[ks] -= 1
        self.w_live[ks] -= self._scores[item]
        self.w_all -= float(self._scores[item])

    def draw_for_running(self, comp) -> Draw | None:
        """After the overall verdict: a uniform draw over the not-yet-drawn pairs of the running slices."""
        running = self.running()
        if not running:
            return None
        pool = np.flatnonzero(~self.drawn & self.member[:, running].any(axis=1))
        if pool.size == 0:
            return None
        item = int(pool[comp.rng.integers(pool.size)])
        draw = Draw(item, 1.0 / pool.size, comp.sampler.remaining, 1.0)
        comp.sampler.remove(item)
        for k in running:
            if self.member[item, k]:
                self._record(len(comp.draws), k, 1.0, 1.0)
        self._leave(item)
        return draw

    def _record(self, index: int, k: int, w: float, wmax: float) -> None:
        self.rec_draw.append(index)
        self.rec_slice.append(k)
        self.rec_weight.append(w)
        self.rec_max.append(wmax)

    # ---------------------------------------------------------------------------------------- statistics
    def observe(self, comp, index: int, y: float, g: np.ndarray) -> None:
        """Process draw `index` (its label y) with predictions g: called in draw order, exactly once."""
        if index != self.processed:
            raise RuntimeError("slice observations must follow the draw order")
        item = comp.draws[index].item
        while self._rec_pos < len(self.rec_draw) and self.rec_draw[self._rec_pos] < index:
            self._rec_pos += 1
        while self._rec_pos < len(self.rec_draw) and self.rec_draw[self._rec_pos] == index:
            k, w, wmax = self.rec_slice[self._rec_pos], self.rec_weight[self._rec_pos], self.rec_max[self._rec_pos]
            self._rec_pos += 1
            if not self.decisions[k].final:
                self._update_slice(k, item, y, g, w, wmax)
        ks = self.member[item]  # the pair leaves every slice's remaining set
        self.counts[ks] += 1
        self.sums[ks] += y
        self.g_sum[ks] -= g[item]
        self.done[item] = True
        self.processed += 1
        self._exhausted_slices()
        self.update_decisions(comp)

    def _update_slice(self, k: int, item: int, y: float, g: np.ndarray, w: float, wmax: float) -> None:
        size, cnt = int(self.sizes[k]), int(self.counts[k])
        rem = size - cnt
        g_bar = float(self.g_sum[k]) / rem
        x = g_bar + (y - float(g[item])) * w
        lo = g_bar - float(self.g_max[k]) * wmax
        hi = g_bar + (1.0 - float(self.g_min[k])) * wmax
        cs = self.cs[k]
        null_mean = (size * cs.grid - self.sums[k]) / rem
        slack = self._noise(cnt, size) / rem
        cs.update(x, null_mean + slack, lo, hi, (size / rem) ** self.growth, mean_lo=0.0, mean_hi=1.0,
                  null_mean_minus=null_mean - slack)
        z = (self.sums[k] + rem * x) / size
        wz = (size / rem) ** 2
        self.est[k] += (wz * z, wz)

    def _noise(self, t: int, size: int) -> float:
        if not self.label_noise:
            return 0.0
        from tiebreak.sampler.engine import noise_bound

        return noise_bound(t, self.noise_alpha, rho=max(size / 8.0, 1.0))

    def _exhausted_slices(self) -> None:
        for k in np.flatnonzero(self.counts == self.sizes):
            size = int(self.sizes[k])
            if size and not self.decisions[k].final:
                theta, slack = self.sums[k] / size, self._noise(size, size) / size
                self.cs[k].exclude_outside(theta - slack, theta + slack)

    def settle(self, comp, k: int, decision: Decision) -> None:
        """Slice k's verdict given by the family's multiple-testing step (sampler.family); persisted with the
        decisions. Freezes the slice's evidence like any verdict."""
        if not decision.final:
            raise ValueError("settle takes a final decision")
        if not self.decisions[k].final:
            self.decisions[k] = decision

    def catch_up(self, comp) -> None:
        """After the overall verdict: process the draws whose labels are in, in order, with the frozen g."""
        while (not self.finished and self.processed < len(comp.draws)
               and comp.draws[self.processed].item in comp.labels):
            self.observe(comp, self.processed, comp.labels[comp.draws[self.processed].item], comp.g)

    def update_decisions(self, comp) -> None:
        rule = DecisionRule(self.margin, self.budget)
        labels_for_budget = len(comp.labels) if self.processed == len(comp.draws) else 0
        pool_done = self.processed == comp.n_items
        for k in range(len(self.names)):
            if self.decisions[k].final:
                continue
            iv = self.cs[k].interval()
            exhausted = pool_done or self.counts[k] == self.sizes[k]
            self.decisions[k] = rule.decide(iv.lower, iv.upper, labels_for_budget, exhausted)

    def statuses(self) -> dict[str, SliceStatus]:
        out = {}
        for k, name in enumerate(self.names):
            iv = self.cs[k].interval()
            num, den = self.est[k]
            est = num / den if den else (self.sums[k] / self.counts[k] if self.counts[k] else 0.5)
            est = min(max(float(est), iv.lower), iv.upper)
            out[name] = SliceStatus(name, int(self.sizes[k]), int(self.counts[k]), est, iv.lower, iv.upper,
                                    self.reported_alpha, self.decisions[k])
        return out

    # ---------------------------------------------------------------------------------------- persistence
    def to_dict(self) -> dict:
        return {
            "names": self.names,
            "member": pack(self.member.ravel(), "u1"),
            "cs": [c.to_dict() for c in self.cs],
            "counts": pack(self.counts, "<i8"), "sums": pack(self.sums), "est": pack(self.est.ravel()),
            "processed": self.processed,
            "records": {"draw": pack(self.rec_draw, "<i8"), "slice": pack(self.rec_slice, "<i8"),
                        "weight": pack(self.rec_weight), "max": pack(self.rec_max)},
            "decisions": [d.value for d in self.decisions],
            "summaries": {"s_min": pack(self.s_min), "g_sum": pack(self.g_sum), "g_max": pack(self.g_max),
                          "g_min": pack(self.g_min)},
        }

    @classmethod
    def from_dict(cls, d: dict, comp) -> SliceTracker:
        names = list(d["names"])
        member = unpack(d["member"], "u1").astype(bool).reshape(-1, len(names))
        self = cls(names, member)
        self.reset(comp)
        self.cs = [BettingConfidenceSequence.from_dict(c) for c in d["cs"]]
        self.counts = unpack(d["counts"], "<i8").astype(int)
        self.sums = unpack(d["sums"])
        self.est = unpack(d["est"]).reshape(-1, 2)
        self.processed = int(d["processed"])
        r = d["records"]
        self.rec_draw = unpack(r["draw"], "<i8").astype(int).tolist()
        self.rec_slice = unpack(r["slice"], "<i8").astype(int).tolist()
        self.rec_weight = unpack(r["weight"]).tolist()
        self.rec_max = unpack(r["max"]).tolist()
        self._rec_pos = 0
        self.decisions = [Decision(v) for v in d["decisions"]]
        for dr in comp.draws[: self.processed]:
            self.done[dr.item] = True
        for dr in comp.draws:
            self.drawn[dr.item] = True
        self._recount()
        sm = d["summaries"]
        self.s_min, self.g_sum = unpack(sm["s_min"]), unpack(sm["g_sum"])
        self.g_max, self.g_min = unpack(sm["g_max"]), unpack(sm["g_min"])
        return self
