"""The sequential comparison of one pool of (base, tuned) pairs: the value object the service persists.

Estimand: theta = (1/N) sum_i Y_i, the preference rate of tuned over base on the pool (Y in {0, 1/2, 1}, the
mean when several annotators label one pair). Design: pairs are drawn *without replacement*; draw t picks
I_t from the not-yet-drawn set R_t with probability q_t(I_t) (sampler.policy). With a prediction g_t
(calibrated judge votes, fitted only on labels processed before t, sampler.calibration) the observation

    Ytilde_t = (1/|R_t|) sum_{i in R_t} g_t(i) + (Y_{I_t} - g_t(I_t)) / (|R_t| q_t(I_t))

is unbiased for the mean of the pairs still in R_t given the past (Horvitz-Thompson on the residual;
prediction-powered inference, Angelopoulos et al. 2023, sequential form as in Zrnic & Candes 2024). If theta
were m, that mean would be c_t(m) = (N m - S_{t-1}) / |R_t| with S_{t-1} the labels processed so far, so
(Ytilde_t, c_t(m)) feed the betting confidence sequence of sampler.confseq (the finite-population
construction of Waudby-Smith & Ramdas 2020). Methods:
    classical  g = 0, uniform q (labels only; Ytilde_t = Y_{I_t})
    ppi        calibrated g, uniform q
    active     calibrated g, q = gamma/|R| + (1 - gamma) * s/sum(s) with s the predicted residual spread.

Labels may arrive out of order (several annotators): draws are processed strictly in draw order, so every
prediction and bet is a function of the processed prefix only (predictable). A lease that expires does not
undo a draw: the service hands the same pair to the next annotator.

Noisy labels (label_noise=True, e.g. the replay's simulated annotator draws one of a pair's several recorded
votes): the label L = Y_I + eps with E[eps | I] = 0, so the sum of processed labels S^obs differs from the sum of
the pairs' verdicts by sum(eps), and c_t(m) is only known up to +- B_t / |R_t| where B_t bounds |sum_{s<t} eps_s|
for all t with probability >= 1 - alpha_noise (noise_bound). K+ is run with the upper and K- with the lower end;
the CS gets alpha - alpha_noise (confseq.BettingConfidenceSequence.update). When the pool is exhausted theta
is then known only to +- B_N / N, not exactly.

Adding pairs after labels exist starts a new pool version e. Every version's verdict counts, so alpha is spent
across versions: version 0 gets (1 - r) alpha and version e >= 1 half of what is left, alpha_e = r alpha / 2^e
(r = pool_growth_alpha_share, 0.05), so sum_e alpha_e = alpha: the probability that *any* verdict the run ever
gives (including one before pairs were added, reopened afterwards) is wrong stays <= alpha (union bound).
A closed pool (r = 0: the replay, where the pool is fixed by construction) runs version 0 at the full alpha and
refuses add_items once labels exist, since no alpha is left for a second version.
Labels already collected are reused for free when their pair is drawn again.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import asdict, dataclass, field

import numpy as np

from tiebreak.sampler.calibration import JudgeCalibration, fit_calibration, judge_features
from tiebreak.sampler.confseq import (
    AsymptoticConfidenceSequence,
    BetSchedule,
    BettingConfidenceSequence,
    candidate_grid,
    confidence_sequence_from_dict,
    pack,
    unpack,
)
from tiebreak.sampler.decision import Decision, DecisionRule
from tiebreak.sampler.policy import Draw, WithoutReplacementSampler
from tiebreak.sampler.slices import SliceStatus, SliceTracker

METHODS = ("classical", "ppi", "active")
DESIGNS = ("without-replacement", "with-replacement")
CONFIDENCE_SEQUENCES = ("betting", "asymptotic")
STATE_VERSION = 2  # 2: arrays packed as base64 of little-endian binary (exact, ~3x smaller than JSON floats)


@dataclass(frozen=True)
class ComparisonConfig:
    alpha: float = 0.05
    margin: float = 0.0
    budget: int | None = None
    method: str = "active"
    uniform_floor: float = 0.5           # gamma: q >= gamma / |R|
    min_labels_to_calibrate: int = 3     # before this, g = 0 and sampling is uniform (3: select_fit's least)
    calibration_penalty: float | None = None  # ridge penalty; None: chosen by leave-one-out on past labels
    grid_resolution: int = 400           # candidate-theta grid for the reported interval
    design: str = "without-replacement"  # or "with-replacement" (reference design; labels reused free)
    confidence_sequence: str = "betting"  # or "asymptotic" (Gaussian-mixture, asymptotically valid only)
    label_noise: bool = False            # a label is one random vote of the pair (see noise_bound)
    noise_alpha_share: float = 0.2       # share of alpha spent on the vote-noise bound when label_noise
    pool_growth_alpha_share: float = 0.05  # r: alpha kept back for pool versions 1, 2, ... (r alpha / 2^e each);
                                           # 0: a closed pool (full alpha, add_items raises)
    variance_adaptive_bets: bool = True   # scale the bets by (label variance / observation variance), predictable
    bets: BetSchedule = field(default_factory=BetSchedule)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)} (got {self.method!r})")
        if not 0 < self.alpha < 1:
            raise ValueError("alpha must lie in (0, 1)")
        if self.design not in DESIGNS:
            raise ValueError(f"design must be one of {', '.join(DESIGNS)} (got {self.design!r})")
        if self.confidence_sequence not in CONFIDENCE_SEQUENCES:
            raise ValueError(f"confidence_sequence must be one of {', '.join(CONFIDENCE_SEQUENCES)} "
                             f"(got {self.confidence_sequence!r})")
        DecisionRule(self.margin, self.budget)  # validates margin and budget
        if not 0 <= self.pool_growth_alpha_share < 1:
            raise ValueError("pool_growth_alpha_share must lie in [0, 1) (0: a closed pool, no pairs can be added)")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["bets"] = {"lambdas": list(self.bets.lambdas), "growth": self.bets.growth, "clip": self.bets.clip}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ComparisonConfig:
        d = dict(d)
        b = d.pop("bets")
        return cls(**d, bets=BetSchedule(tuple(b["lambdas"]), b["growth"], b["clip"]))


@dataclass(frozen=True)
class ComparisonStatus:
    n_items: int
    labels: int              # human labels used (each pair counted once; reused labels are free)
    processed: int           # draws whose label has entered the confidence sequence
    pending: int             # drawn, waiting for a label
    estimate: float
    lower: float
    upper: float
    alpha: float             # bound on P(this verdict is wrong): the run's alpha while the pool is as given
                             # (its CS runs at 0.95 alpha, 0.05 alpha is kept for growth), after growth
                             # the current version's share (half the remaining alpha)
    decision: Decision
    method: str
    pool_version: int

    def to_dict(self) -> dict:
        d = asdict(self)
        d["decision"] = self.decision.value
        return d


def prediction_powered_observation(y: float, g_item: float, g_remaining_sum: float, remaining: int,
                                   prob: float) -> float:
    """Ytilde = (1/|R|) sum_{i in R} g(i) + (y - g(I)) / (|R| q(I)); E[Ytilde | past] = mean of Y over R."""
    return g_remaining_sum / remaining + (y - g_item) / (remaining * prob)


def noise_bound(t: int, alpha: float, rho: float = 25.0) -> float:
    """Time-uniform bound on |sum_{s<=t} eps_s| for independent mean-zero eps_s, each in a range of width 1.

    Such eps are 1/2-sub-Gaussian (Hoeffding's lemma), so with V_t = t/4 and S_t = sum eps,
    exp(lam S_t - lam^2 V_t / 2) is a supermartingale for every real lam. Mixing lam over N(0, 1/rho) -- a
    distribution on the whole real line, so the mixture is already two-sided -- gives the supermartingale
        M_t = sqrt(rho / (V_t + rho)) exp( S_t^2 / (2 (V_t + rho)) ),
    and Ville's inequality P(exists t: M_t >= 1/alpha) <= alpha is exactly (Robbins 1970; Howard, Ramdas,
    McAuliffe & Sekhon 2021, "Time-uniform, nonparametric, nonasymptotic confidence sequences", Ann. Statist.,
    eq. (14), two-sided normal mixture)
        B_t = sqrt( 2 (V_t + rho) log( sqrt((V_t + rho) / rho) / alpha ) ),
        P(exists t: |S_t| >= B_t) <= alpha.
    (An earlier version used 2/alpha, as if a one-sided boundary were being doubled: 11 % wider than needed.)
    rho sets where it is tightest (V_t ~ rho); the engine uses rho = N/8 (tightest half-way through the pool).
    """
    if t <= 0:
        return 0.0
    v = t / 4.0 + rho
    return math.sqrt(2.0 * v * math.log(math.sqrt(v / rho) / alpha))


ACTIVE_MIN_GAIN = 0.9  # active sampling only if its predicted residual variance is <= 0.9 x uniform's
ACTIVE_MIN_LABELS = 20  # ... and only once the spread model (a second-moment fit) has this many labels
REFIT_GROWTH = 0.1     # refit whenever the processed labels have grown by 10 % ...
REFIT_MIN_STEP = 1     # ... or by this many labels, whichever is more


@functools.lru_cache(maxsize=4096)
def _refit_due(n: int, min_labels: int, min_step: int = REFIT_MIN_STEP) -> bool:
    """Refit at r_0 = min_labels, then at r_{k+1} = max(r_k + min_step, ceil(1.1 r_k)), for ever.

    Geometric: O(log n) refits over a run, each O(N), so the amortised cost per label is O(N log n / n).
    (The previous schedule tested (n - min) % int(0.1 n) == 0, which stopped firing after 200 labels.)
    Cached: it is asked after every label, and the walk up the schedule cost as much as the bet update.
    """
    if n < min_labels:
        return False
    r = min_labels
    while r < n:
        r = max(r + min_step, math.ceil(r * (1 + REFIT_GROWTH)))
    return r == n


class Comparison:
    """Mutable sequential comparison over a pool of pairs. Deterministic given its Generator."""

    def __init__(self, judge_votes: np.ndarray | None, n_items: int | None = None,
                 config: ComparisonConfig | None = None, rng: np.random.Generator | None = None,
                 prior: JudgeCalibration | None = None, voted: np.ndarray | None = None) -> None:
        self.config = config or ComparisonConfig()
        self.prior = prior
        if judge_votes is None:
            if n_items is None:
                raise ValueError("give judge_votes (pairs x judges) or n_items")
            judge_votes = np.empty((n_items, 0))
        votes = _checked_votes(judge_votes)
        if n_items is not None and n_items != votes.shape[0]:
            raise ValueError("n_items disagrees with the number of rows of judge_votes")
        self.rng = rng if rng is not None else np.random.default_rng()
        self.labels: dict[int, float] = {}   # every human label ever received, by pair
        self.pool_version = 0
        self.slices: SliceTracker | None = None  # per-slice verdicts on the same draws (set_slices)
        self._arrived: dict[int, np.ndarray] = {}  # streaming: votes received, used from the next refit
        self._arrived_at: dict[int, int] = {}      # ... and how many draws existed when each arrived
        self._set_pool(votes, voted)

    # ----------------------------------------------------------------------------------------------- setup
    def _set_pool(self, votes: np.ndarray, voted: np.ndarray | None = None) -> None:
        self.n_items = votes.shape[0]
        # voted[i]: pair i's votes are in the features; a pair without (streaming: judges still voting) has an
        # all-missing feature row, so its prediction is the calibration's "no votes" prediction
        self.voted = np.ones(self.n_items, dtype=bool) if voted is None else \
            np.asarray(voted, dtype=bool).reshape(self.n_items).copy()
        if not self.voted.all():
            votes = votes.copy()
            votes[~self.voted] = np.nan
        self.votes = votes
        self.features = judge_features(votes) if votes.shape[1] else np.empty((self.n_items, 0))
        self.draws: list[Draw] = []
        self.processed = 0
        self.label_sum = 0.0
        if self.prior is not None and len(self.prior.coef) != self.features.shape[1]:
            raise ValueError(f"prior calibration has {len(self.prior.coef)} features, the pool "
                             f"{self.features.shape[1]} (2 per judge)")
        self.calibration = self.prior or JudgeCalibration.constant(0.0, self.features.shape[1], spread=0.25)
        self._apply_calibration()
        self.sampler = WithoutReplacementSampler(self.n_items, None, self.gamma,
                                                 with_replacement=self.with_replacement)
        self._set_sampler_scores()
        cfg = self.config
        extra = (0.5, 0.5 - cfg.margin, 0.5 + cfg.margin)
        self.cs: BettingConfidenceSequence | AsymptoticConfidenceSequence
        if cfg.confidence_sequence == "asymptotic":
            self.cs = AsymptoticConfidenceSequence(self.cs_alpha)
        else:
            self.cs = BettingConfidenceSequence(self.cs_alpha, candidate_grid(cfg.grid_resolution, extra), cfg.bets)
        self.labelled_processed: set[int] = set()
        self._est_num = 0.0
        self._moments = [0.0, 0.0, 0.0, 0.0, 0.0]  # processed, mean and M2 of the labels, mean and M2 of x
        self._est_den = 0.0
        self.trajectory: list[list[float]] = []  # [labels, estimate, lower, upper]
        self._settled: Decision | None = None    # a verdict given by the family's procedure (settle)
        self._decision = Decision.RUNNING
        self._update_decision()
        if self.slices is not None:
            self.slices.reset(self)

    def set_slices(self, names: list[str], member: np.ndarray) -> None:
        """Track a verdict per slice (member[i, k]: pair i is in slice names[k]) on this comparison's draws.

        Every slice is tested at this comparison's alpha: give the comparison alpha / (1 + K) (sampler.slices
        .slice_alpha) so that the overall verdict and the K slice verdicts together err with probability <= alpha.
        Must be called before the first draw.
        """
        if self.draws:
            raise ValueError("set slices before the first draw")
        self.slices = SliceTracker(list(names), member)
        self.slices.reset(self)

    @property
    def finished(self) -> bool:
        """The overall verdict and every slice's verdict are final: nothing more to draw."""
        return self._decision.final and (self.slices is None or self.slices.finished)

    def slice_statuses(self) -> dict[str, SliceStatus]:
        return self.slices.statuses() if self.slices is not None else {}

    @property
    def alpha(self) -> float:
        """alpha of the current pool version: (1 - r) alpha for version 0, r alpha / 2^e for version e >= 1."""
        r = self.config.pool_growth_alpha_share
        if self.pool_version == 0:
            return self.config.alpha * (1 - r)
        return self.config.alpha * r / 2**self.pool_version

    @property
    def reported_alpha(self) -> float:
        """What a user is promised: the run's alpha until pairs are added (every verdict the run can give,
        now or after growth, shares it), afterwards the current version's alpha."""
        return self.config.alpha if self.pool_version == 0 else self.alpha

    @property
    def with_replacement(self) -> bool:
        return self.config.design == "with-replacement"

    @property
    def cs_alpha(self) -> float:
        return self.alpha * (1 - self.config.noise_alpha_share) if self.config.label_noise else self.alpha

    @property
    def noise_alpha(self) -> float:
        return self.alpha * self.config.noise_alpha_share

    def _noise(self, t: int) -> float:
        return noise_bound(t, self.noise_alpha, rho=max(self.n_items / 8.0, 1.0)) if self.config.label_noise else 0.0

    @property
    def gamma(self) -> float:
        return self.config.uniform_floor if self.config.method == "active" else 1.0

    @property
    def uses_judges(self) -> bool:
        return self.config.method != "classical" and self.features.shape[1] > 0

    def _apply_calibration(self) -> None:
        """Recompute g over the pool and the running sums that depend on it (O(N), at refits only)."""
        n = self.n_items
        if self.uses_judges and self.calibration.n_labels > 0:
            self.g = self.calibration.predict(self.features)
            self.spread = np.sqrt(self.calibration.predict_spread(self.features))
        else:
            self.g = np.zeros(n)
            self.spread = np.full(n, 0.5)
        done = np.zeros(n, dtype=bool)
        if not self.with_replacement:  # with replacement R is always the whole pool
            done[[d.item for d in self.draws[: self.processed]]] = True
        rest = self.g[~done]
        self.g_remaining_sum = float(rest.sum())
        self.g_max = float(rest.max()) if rest.size else 0.0
        self.g_min = float(rest.min()) if rest.size else 0.0

    # ------------------------------------------------------------------------------------------ the queue
    def _pending_set(self) -> set[int]:
        return {d.item for d in self.draws[self.processed:]}

    def pending_items(self) -> list[int]:
        """Pairs handed out and still waiting for a label, each once (with replacement a pair can be drawn
        again while it waits)."""
        return list(dict.fromkeys(d.item for d in self.draws[self.processed:] if d.item not in self.labels))

    @property
    def decision(self) -> Decision:
        return self._decision

    def next_items(self, k: int = 1) -> list[int]:
        """Draw up to k new pairs for humans; pairs labelled earlier are consumed for free on the way."""
        out: list[int] = []
        budget = self.config.budget
        while len(out) < k and not self.finished and self.sampler.remaining > 0:
            pending = self._pending_set()
            outstanding = len(self.labels) + sum(1 for i in pending if i not in self.labels)
            if budget is not None and outstanding >= budget:
                break
            if self.with_replacement and outstanding >= self.n_items and pending:
                break  # every pair is labelled or waiting: wait for the labels instead of drawing in circles
            if self._decision.final:  # only slices still need labels (sampler.slices: Allocation)
                draw = self.slices.draw_for_running(self)  # type: ignore[union-attr]
                if draw is None:
                    break
            elif self.slices is not None:
                pre = self.slices.before_draw(self.sampler)
                draw = self.sampler.draw(self.rng)
                self.slices.after_draw(len(self.draws), draw, pre)
            else:
                draw = self.sampler.draw(self.rng)
            self.draws.append(draw)
            if draw.item in self.labels:
                self._process_ready()
            elif draw.item not in pending:
                out.append(draw.item)
        return out

    def follow(self, draw: Draw, slice_pre: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
               remove: bool = True) -> None:
        """Take a draw made by a shared design (sampler.family): the same pair, probability q_t(I_t), |R_t| and
        predictable max weight, so this comparison's observation of the draw is its own prediction-powered
        increment under that design. slice_pre: the design's per-slice (n^s, q_t(s), min q_t) taken before
        the draw (SliceTracker.before_draw on the drawing comparison, or the uniform design's). remove=False
        when this comparison's own sampler made the draw (it has already removed the pair)."""
        if self.with_replacement:
            raise ValueError("a shared draw sequence needs the without-replacement design")
        if remove:
            self.sampler.remove(draw.item)
        if self.slices is not None:
            if slice_pre is None:
                raise ValueError("a comparison with slices needs the design's per-slice probabilities")
            self.slices.after_draw(len(self.draws), draw, slice_pre)
        self.draws.append(draw)
        if draw.item in self.labels:
            self._process_ready()

    def settle(self, decision: Decision) -> None:
        """A verdict reached by the family's multiple-testing procedure (sampler.family: Holm) rather than by
        this comparison's own alpha: it freezes the evidence as any verdict does."""
        if not decision.final:
            raise ValueError("settle takes a final decision")
        if self._decision.final:
            return
        self._decision = self._settled = decision
        if self.slices is not None:
            self.slices.catch_up(self)

    def record_label(self, item: int, y: float) -> bool:
        """Store the human verdict for a drawn pair (1 tuned better, 0.5 tie, 0 base better).

        Returns False (and changes nothing) when the pair already has a label: labels are idempotent.
        """
        self._check_label(item, y)
        if item in self.labels:
            return False
        if item not in self._pending_set():
            raise ValueError(f"pair {item} was not handed out for labelling")
        self.labels[item] = float(y)
        self._process_ready()
        return True

    def _check_label(self, item: int, y: float) -> None:
        if not 0 <= item < self.n_items:
            raise ValueError(f"pair index {item} is outside the pool (0..{self.n_items - 1})")
        if not 0.0 <= y <= 1.0:
            raise ValueError("label must lie in [0, 1] (1 tuned better, 0.5 tie, 0 base better)")

    def offer_label(self, item: int, y: float) -> bool:
        """Store a verdict for any pair, drawn or not (annotation tools, per-criterion labels).

        A pending pair is processed at once; an undrawn one is consumed for free when the sampler draws it.
        Valid because the estimator only uses a label when its pair is drawn (no selection by who labelled
        what), and predictions may depend on any label known before the draw (design-based argument: labels
        are fixed numbers, only the draws are random). Returns False when the pair already had a label.
        """
        self._check_label(item, y)
        if item in self._pending_set():
            return self.record_label(item, y)
        if item in self.labels:
            return False
        self.labels[item] = float(y)
        return True

    # ------------------------------------------------------------------------------------------ streaming
    def add_votes(self, items, judge_votes) -> None:
        """Judge votes that arrived for pairs created without them (a streaming run: labels start at once).

        Held back until the next calibration refit (``_refit``, which runs between draws), and a refit made
        when draws 0..p-1 are processed uses only the votes that arrived before draw p was *made* (each vote is
        stamped with ``len(draws)`` on arrival). So the prediction g_t used for draw t, and the scores behind
        q_t, are functions of the labels processed before t and of votes that arrived before I_t was drawn:
        whatever the machines did until then depends on I_1..I_{t-1}, the seed and the machines' own timing,
        never on I_t, even when they react to draws (a generate run makes a drawn pair's outputs, and hence
        its votes, first; several annotators leave draws pending while votes come in). With one annotator
        (no pending draws) every vote that arrived before the refit is used, as before. Before the first draw
        of the pool version nothing is predicted yet and they are used at once, so a run whose votes all arrive
        before labelling starts is the wait-for-all run exactly.
        """
        idx = np.asarray(items, dtype=int).reshape(-1)
        rows = _checked_votes(np.asarray(judge_votes, dtype=float).reshape(idx.size, self.votes.shape[1]))
        if idx.size and (idx.min() < 0 or idx.max() >= self.n_items):
            raise ValueError(f"pair index outside the pool (0..{self.n_items - 1})")
        for i, r in zip(idx.tolist(), rows, strict=True):
            self._arrived[i] = r
            self._arrived_at[i] = len(self.draws)
        if not self.draws and self._use_arrived_votes():
            self._apply_calibration()
            self._set_sampler_scores()

    @property
    def n_voted(self) -> int:
        """Pairs whose votes are in use or have arrived (used from the next refit)."""
        return int(self.voted.sum()) + sum(1 for i in self._arrived if not self.voted[i])

    def votes_received(self) -> np.ndarray:
        """Every vote received: those in use and those that arrived since the last refit."""
        if not self._arrived:
            return self.votes
        out = self.votes.copy()
        for i, r in self._arrived.items():
            out[i] = r
        return out

    def _use_arrived_votes(self, made_before: int | None = None) -> bool:
        """Move arrived votes into the feature rows (at refits, or before the first draw); with ``made_before``
        = p only those that arrived before draw p was made (see add_votes), the others stay held back."""
        ready = [i for i in self._arrived if made_before is None or self._arrived_at.get(i, 0) <= made_before]
        if not ready:
            return False
        idx = np.asarray(ready, dtype=int)
        rows = np.vstack([self._arrived.pop(i) for i in ready])
        for i in ready:
            self._arrived_at.pop(i, None)
        self.votes = self.votes.copy()
        self.votes[idx] = rows
        self.voted[idx] = True
        if self.votes.shape[1]:
            self.features[idx] = judge_features(rows)
        return True

    # ---------------------------------------------------------------------------------------- statistics
    def _process_ready(self) -> None:
        # A verdict freezes the evidence: labels that arrive after it are stored but not processed, so the
        # reported interval does not depend on whether late labels came before or after the verdict.
        while (not self._decision.final and self.processed < len(self.draws)
               and self.draws[self.processed].item in self.labels):
            self._process(self.draws[self.processed])
        if self.slices is not None and self._decision.final:
            self.slices.catch_up(self)

    def _process(self, draw: Draw) -> None:
        n, rem = self.n_items, draw.remaining
        y = self.labels[draw.item]
        g_bar = self.g_remaining_sum / rem
        x = prediction_powered_observation(y, float(self.g[draw.item]), self.g_remaining_sum, rem, draw.prob)
        # Z_t: unbiased for theta given the past (without replacement it adds the labels already seen)
        z = x if self.with_replacement else (self.label_sum + rem * x) / n
        if isinstance(self.cs, AsymptoticConfidenceSequence):
            self.cs.update(z)
        else:
            lo = g_bar - self.g_max * draw.max_weight
            hi = g_bar + (1.0 - self.g_min) * draw.max_weight
            if self.with_replacement:  # c_t(m) = m; the vote noise of the distinct labelled pairs shifts it
                null_mean = self.cs.grid.copy()
                slack = self._noise(len(self.labelled_processed)) / n
                scale = 1.0
            else:
                null_mean = (n * self.cs.grid - self.label_sum) / rem
                slack = self._noise(self.processed) / rem
                scale = (n / rem) ** self.config.bets.growth
            scale *= self._bet_variance_factor()
            self.cs.update(x, null_mean + slack, lo, hi, scale, mean_lo=0.0, mean_hi=1.0,
                           null_mean_minus=null_mean - slack)
        self._update_moments(y, x)
        # Point estimate: precision-weighted mean of the Z_t (weights (N/|R_t|)^2 are predictable).
        w = (n / rem) ** 2
        self._est_num += w * z
        self._est_den += w
        if self.slices is not None:  # same draw, same g_t, before the refit that uses this label
            self.slices.observe(self, self.processed, y, self.g)
        self.processed += 1
        if self.with_replacement:
            self.labelled_processed.add(draw.item)
            if len(self.labelled_processed) == n:  # every pair labelled: theta is known
                theta = sum(self.labels[i] for i in range(n)) / n
                slack = self._noise(n) / n
                self.cs.exclude_outside(theta - slack, theta + slack)
        else:
            self.label_sum += y
            self.g_remaining_sum -= self.g[draw.item]
            if self.processed == n:
                theta, slack = self.label_sum / n, self._noise(n) / n
                self.cs.exclude_outside(theta - slack, theta + slack)
        if self.uses_judges and _refit_due(self.processed, self.config.min_labels_to_calibrate):
            self._refit()
        self._update_decision()

    def _bet_variance_factor(self) -> float:
        """Variance-adaptive bets: the bet grid was tuned for labels-only observations, and a Kelly-type bet is
        ~ effect / variance (Waudby-Smith & Ramdas 2024, Sec. 5: predictable plug-in bets), so when the
        prediction-powered observations are less variable than the labels the bets grow by
            f_t = min(rho_pred, rho_seen),   clipped to [1/2, 4],
        rho_pred = Var(Y) / E[(Y - g_t)^2] as the calibration that made g_t predicts it out of sample
        (JudgeCalibration.variance_ratio: leave-one-out, with C replaced by its empirical-Bayes posterior mean),
        rho_seen = (1/4 + M2_y) / (1/4 + M2_x), the ratio of the running sums of squared deviations of the
        labels and of the observations over the draws processed *before* t (one pseudo-observation of variance
        1/4 each). Under uniform sampling Ytilde_t - c_t(m) varies only through Y_I - g_t(I), so both estimate
        the ratio of the observations' variances: rho_pred reacts at once when the judges earn trust (rho_seen
        lags: draws made before that weigh on it for the rest of the run), rho_seen corrects a spurious weight
        (a useless judge given some trust by chance makes the observations *more* variable, rho_seen < 1, while
        rho_pred > 1 -- with rho_pred alone the shuffled-judge PandaLM pools cost up to 1.028x classical, against
        1.015x before). With a carried prior rho_pred alone is used: it rests on the prior's labels (pooled with
        this pool's), so the bets fit the judges from the first draw. f_t is fixed before draw t (predictable),
        so each factor of the capital process keeps conditional mean 1 and the caps clip / (c - lo) still hold;
        f = 1 exactly for classical; a judge with weight 0 (and no prior) has rho_pred = 1, so f <= 1.
        """
        if not self.config.variance_adaptive_bets or not self.uses_judges:
            return 1.0
        predicted = self.calibration.variance_ratio
        if self.prior is None:
            m2_y, m2_x = self._moments[2], self._moments[4]
            predicted = min(predicted, (0.25 + m2_y) / (0.25 + m2_x))
        return float(min(4.0, max(0.5, predicted)))

    def _update_moments(self, y: float, x: float) -> None:
        m = self._moments
        m[0] += 1.0
        for k, v in ((1, y), (3, x)):  # Welford
            delta = v - m[k]
            m[k] += delta / m[0]
            m[k + 1] += delta * (v - m[k])

    def _refit(self) -> None:
        # Exactly the labels of the draws processed so far: a function of I_1..I_t (and their fixed labels)
        # only, whichever pairs happen to be pending or labelled early, so g_{t+1} is predictable by construction.
        # (Adding other known labels made the fit depend on which pair was pending, i.e. on the next draw.)
        # between draws: the features of draw t+1 on are fixed here, from votes that arrived before it was made
        self._use_arrived_votes(made_before=self.processed)
        items = np.fromiter((d.item for d in self.draws[: self.processed]), dtype=int)
        ys = np.asarray([self.labels[i] for i in items])
        self.calibration = fit_calibration(self.features[items], ys, self.config.calibration_penalty, self.prior)
        self._apply_calibration()
        self._set_sampler_scores()
        if self.slices is not None:
            self.slices.on_refit(self)

    def _set_sampler_scores(self) -> None:
        """Active sampling only where the calibration predicts it pays (else uniform, i.e. the ppi design).

        With q = gamma/|R| + (1 - gamma) s / sum s and s_i the predicted residual sd, the variance of the
        Horvitz-Thompson residual term relative to uniform sampling is about
            ratio = mean_i( s_i^2 / (gamma + (1 - gamma) s_i / mean(s)) ) / mean(s^2)
        (Neyman allocation with a floor; Zrnic & Candes 2024). Active sampling also widens the observation's
        range by max_weight, which costs the betting CS; so it is used only when ratio <= ACTIVE_MIN_GAIN, and
        only once the calibration rests on ACTIVE_MIN_LABELS labels: the spread model is a fit of squared
        residuals, noisier than the mean's, and with fewer labels a useless judge's spurious spread turned
        active sampling on (useless-judge PandaLM pools with kappa = 1 in select_fit: worst 1.044x classical
        with active from the first fit, 1.021x from 20 labels; docs/statistics.md).
        A function of the calibration alone (whole pool, not the remaining pairs), hence predictable and
        reproduced exactly on reload.
        """
        if not (self.gamma < 1.0 and self.uses_judges and self.calibration.n_labels >= ACTIVE_MIN_LABELS):
            self.sampler.set_scores(None)
            self.active_in_use = False
            return
        sd = self.spread
        ratio = float(np.mean(sd**2 / (self.gamma + (1 - self.gamma) * sd / sd.mean())) / np.mean(sd**2))
        self.active_in_use = ratio <= ACTIVE_MIN_GAIN
        self.sampler.set_scores(self.spread if self.active_in_use else None)

    def _update_decision(self, record: bool = True) -> None:
        iv = self.cs.interval()
        est = self._est_num / self._est_den if self._est_den else 0.5
        est = min(max(est, iv.lower), iv.upper)
        rule = DecisionRule(self.config.margin, self.config.budget)
        exhausted = (len(self.labelled_processed) if self.with_replacement else self.processed) == self.n_items
        # The budget ends a run only once every drawn pair is processed: otherwise labels that arrived out of
        # order (received, not yet processed) would count against the budget before they count as evidence.
        labels_for_budget = len(self.labels) if self.processed == len(self.draws) else 0
        self._decision = self._settled or rule.decide(iv.lower, iv.upper, labels_for_budget, exhausted,
                                                      closed=iv.closed)
        self._estimate = float(est)
        if record and self.processed and (not self.trajectory or self.trajectory[-1][0] != len(self.labels)):
            self.trajectory.append([len(self.labels), est, iv.lower, iv.upper])

    def status(self) -> ComparisonStatus:
        iv = self.cs.interval()
        return ComparisonStatus(self.n_items, len(self.labels), self.processed, len(self.pending_items()),
                                self._estimate, iv.lower, iv.upper, self.reported_alpha, self._decision,
                                self.config.method, self.pool_version)

    # ----------------------------------------------------------------------------------------- pool growth
    def add_items(self, judge_votes: np.ndarray, slice_member: np.ndarray | None = None,
                  voted: np.ndarray | None = None) -> None:
        """Append pairs. Before any draw the pool just grows; afterwards a new pool version starts.

        With slices, slice_member gives the new pairs' rows of the membership matrix (default: in no slice);
        voted marks which new pairs have their votes (default all; see add_votes for the others).
        """
        new = _checked_votes(judge_votes)
        if new.shape[1] != self.votes.shape[1]:
            raise ValueError(f"new pairs need one vote column per judge ({self.votes.shape[1]})")
        if self.slices is not None:
            rows = (np.zeros((new.shape[0], len(self.slices.names)), dtype=bool) if slice_member is None
                    else np.asarray(slice_member, dtype=bool).reshape(new.shape[0], len(self.slices.names)))
            self.slices.member = np.vstack([self.slices.member, rows])
        if self.draws:
            if self.config.pool_growth_alpha_share == 0:
                raise ValueError("this comparison's pool is closed (pool_growth_alpha_share=0: it runs at the full "
                                 "alpha, none is kept for growth); start a new comparison for the larger pool, or "
                                 "create it with pool_growth_alpha_share > 0")
            self.pool_version += 1
        self._use_arrived_votes()  # a new pool version starts from a fresh calibration: nothing to keep back
        new_voted = np.ones(new.shape[0], dtype=bool) if voted is None else np.asarray(voted, dtype=bool)
        self._set_pool(np.vstack([self.votes, new]), np.concatenate([self.voted, new_voted.reshape(-1)]))
        # Past labels stay: they will be consumed for free when drawn.

    # ---------------------------------------------------------------------------------------- persistence
    def to_dict(self, include_votes: bool = True) -> dict:
        """Exact JSON-able state (floats round-trip exactly through json)."""
        return {
            "version": STATE_VERSION,
            "config": self.config.to_dict(),
            "votes": _nan_to_none(self.votes_received().tolist()) if include_votes else None,
            "n_judges": int(self.votes.shape[1]),
            "n_items": int(self.n_items),
            "pool_version": self.pool_version,
            # streaming: which pairs' votes are in use, which arrived (their votes come from judge_votes)
            **({} if self.voted.all() and not self._arrived else {
                "voted": pack(np.packbits(self.voted), "u1"),
                "arrived": pack(sorted(self._arrived), "<i8"),
                "arrived_at": pack([self._arrived_at.get(i, 0) for i in sorted(self._arrived)], "<i8")}),
            "labels": {"items": pack(list(self.labels.keys()), "<i8"), "values": pack(list(self.labels.values()))},
            "draws": {"items": pack([d.item for d in self.draws], "<i8"),
                      "probs": pack([d.prob for d in self.draws]),
                      "remaining": pack([d.remaining for d in self.draws], "<i8"),
                      "max_weights": pack([d.max_weight for d in self.draws])},
            "processed": self.processed,
            "label_sum": self.label_sum,
            "calibration": asdict(self.calibration),
            "prior": asdict(self.prior) if self.prior is not None else None,
            "g_remaining_sum": self.g_remaining_sum,
            "g_max": self.g_max,
            "g_min": self.g_min,
            "score_min": self.sampler.score_min,
            "cs": self.cs.to_dict(),
            "estimate": [self._est_num, self._est_den],
            "moments": list(self._moments),
            "trajectory": pack(self.trajectory),
            "rng": self.rng.bit_generator.state,
            **({"settled": self._settled.value} if self._settled is not None else {}),
            **({"slices": self.slices.to_dict()} if self.slices is not None else {}),
        }

    def to_json(self, include_votes: bool = True) -> str:
        return json.dumps(self.to_dict(include_votes))

    @classmethod
    def from_dict(cls, d: dict, judge_votes: np.ndarray | None = None) -> Comparison:
        if d.get("version") not in (1, STATE_VERSION):
            raise ValueError(f"unsupported comparison state version {d.get('version')!r}")
        votes = judge_votes if judge_votes is not None else d["votes"]
        if votes is None:
            raise ValueError("state saved without votes: pass judge_votes")
        if isinstance(votes, list):
            votes = _none_to_nan(votes)
        votes = np.asarray(votes, dtype=float).reshape(d.get("n_items", -1), d["n_judges"])
        rng = np.random.default_rng()
        rng.bit_generator.state = d["rng"]
        self = cls.__new__(cls)
        self.config = ComparisonConfig.from_dict(d["config"])
        self.prior = JudgeCalibration.from_dict(d["prior"]) if d.get("prior") else None
        self.rng = rng
        if isinstance(d["labels"], dict):
            label_items = unpack(d["labels"]["items"], "<i8").astype(int).tolist()
            self.labels = dict(zip(label_items, unpack(d["labels"]["values"]).tolist(), strict=True))
        else:  # version 1
            self.labels = {int(i): float(y) for i, y in d["labels"]}
        self.pool_version = d["pool_version"]
        self.slices = None
        self._arrived = {}
        self._arrived_at = {}
        voted = None
        if d.get("voted") is not None:
            voted = np.unpackbits(unpack(d["voted"], "u1"), count=votes.shape[0]).astype(bool)
            full = votes
            arrived = unpack(d["arrived"], "<i8").tolist()
            self._arrived = {int(i): full[int(i)].copy() for i in arrived}
            # states saved before the stamps: every held vote counts as arrived before the pending draws
            stamps = unpack(d["arrived_at"], "<i8").tolist() if d.get("arrived_at") is not None else [0] * len(arrived)
            self._arrived_at = {int(i): int(s) for i, s in zip(arrived, stamps, strict=True)}
        self._set_pool(votes, voted)
        if isinstance(d["draws"], dict):
            dd = d["draws"]
            self.draws = [Draw(int(i), float(p), int(r), float(w)) for i, p, r, w in zip(
                unpack(dd["items"], "<i8").tolist(), unpack(dd["probs"]).tolist(),
                unpack(dd["remaining"], "<i8").tolist(), unpack(dd["max_weights"]).tolist(), strict=True)]
        else:  # version 1
            self.draws = [Draw(int(i), float(p), int(r), float(w)) for i, p, r, w in d["draws"]]
        self.processed = d["processed"]
        self.label_sum = d["label_sum"]
        self.calibration = JudgeCalibration.from_dict(d["calibration"])
        self._apply_calibration()
        # the running g sums are restored exactly (recomputing them could differ in the last bit)
        self.g_remaining_sum, self.g_max, self.g_min = d["g_remaining_sum"], d["g_max"], d["g_min"]
        drawn = np.zeros(self.n_items, dtype=bool)
        drawn[[dr.item for dr in self.draws]] = True
        self.sampler = WithoutReplacementSampler(self.n_items, None, self.gamma,
                                                 drawn=None if self.with_replacement else drawn,
                                                 with_replacement=self.with_replacement)
        self._set_sampler_scores()
        if self.active_in_use:
            if "score_min" in d:  # the bound computed at the last refit, not over today's live pairs
                self.sampler.score_min = d["score_min"]
        self.cs = confidence_sequence_from_dict(d["cs"])
        if self.with_replacement:
            self.labelled_processed = {dr.item for dr in self.draws[: self.processed]}
        self._est_num, self._est_den = d["estimate"]
        self._moments = list(d.get("moments", [0.0] * 5))
        self.trajectory = unpack(d["trajectory"]).reshape(-1, 4).tolist()
        self._settled = Decision(d["settled"]) if d.get("settled") else None
        self._update_decision(record=False)  # the trajectory is restored as saved
        if d.get("slices"):
            self.slices = SliceTracker.from_dict(d["slices"], self)
        return self

    @classmethod
    def from_json(cls, s: str, judge_votes: np.ndarray | None = None) -> Comparison:
        return cls.from_dict(json.loads(s), judge_votes)


def _checked_votes(judge_votes) -> np.ndarray:
    votes = np.asarray(judge_votes, dtype=float)
    if votes.ndim != 2:
        raise ValueError("judge_votes must be 2-D: one row per pair, one column per judge")
    if np.any((votes < 0) | (votes > 1)):
        raise ValueError("judge_votes must be probabilities in [0, 1] (NaN for a missing vote)")
    return votes


def _nan_to_none(rows: list) -> list:
    return [[None if (isinstance(v, float) and math.isnan(v)) else v for v in r] for r in rows]


def _none_to_nan(rows: list) -> list:
    return [[math.nan if v is None else v for v in r] for r in rows]


def label_from_verdict(verdict: str, tuned_is_left: bool) -> float:
    """Map an annotator's "left" / "right" / "tie" on a blind pair to Y (1 = tuned better)."""
    if verdict == "tie":
        return 0.5
    if verdict not in ("left", "right"):
        raise ValueError("verdict must be one of left, right, tie")
    return 1.0 if (verdict == "left") == tuned_is_left else 0.0
