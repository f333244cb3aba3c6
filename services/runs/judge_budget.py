"""What each judge of a run is worth, and ``judge_budget: "auto"``: stop spending compute on a judge that is
shown to be worthless for this run.

Owns: the per-judge work record kept in the run's meta (``meta["judge_work"][name]`` = pairs voted, CPU-seconds,
state), the value view (``judges_value``: sampler/judge_value.py on the labels so far) and the stop rule.

The value is measured on the overall comparison's *processed* draws only (the labels that have entered its
confidence sequence, in draw order) and on the votes that have arrived for those pairs. So the decision to stop
a judge at any time is a function of past labels (and of votes, which never see a label): whichever pairs are
left without that judge's vote, the prediction g_t of every later draw is fixed at a refit from information
before that draw, and the run's confidence sequence stays valid (docs/statistics.md, "Judges that must earn
their compute"). Labels that arrived out of order and are not yet processed are deliberately not used: one of
them could be the label of a pair whose prediction the stop would still change.

The trial (``trial``): at checkpoints of p, 2p, 4p, ... labelled pairs with its vote (p = trial_pairs(N)), a
judge's votes on those first pairs must agree with the labels (``agrees``: one-sided TRIAL_LEVEL), or it is
stopped; so a judge without signal costs about p pairs, a share of the pool, instead of the ~90 labelled pairs
the stop rule needs.

Pay as you go (``allowance``): under the auto budget a judge that has not yet shown value for this run (at the
latest trial checkpoint with at least MIN_PAIRS pairs, its RELEASE_LEVEL interval's lower end > RELEASE) votes
the labelled pairs (they measure it) and at most LEAD_START + LEAD_PER_LABEL x labels pairs ahead of the labels;
once shown, it votes as fast as it can. Like the stop rule, the trial and the allowance are functions of the
processed labels (and of votes) only.

States: ``running`` (the pipeline votes with it), ``waiting-for-labels`` (shown in the status only: a running
judge under the auto budget that has used up its lead and waits for labels), ``stopped-worthless`` (auto budget:
stopped by its trial or the stop rule, ``stopped_by``; pairs it voted keep their votes, the others have none
from it), ``stopped-decided`` (every verdict of
the run is final, whatever the budget: no vote can change anything any more), ``finished`` (it voted every
pair), ``supplied`` (votes given with the pairs: nothing was spent here).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np

from tiebreak.sampler.engine import Comparison
from tiebreak.sampler.judge_value import JudgeValue, judge_value, jury_value, worthless
from tiebreak.services.runs.model import OVERALL, RunRuntime

# The stop rule of judge_budget "auto" (stated in docs/concepts.md): on at least MIN_PAIRS labelled pairs with its
# vote, the upper end of the judge's 90 % interval says it saves < THRESHOLD of the labels.
THRESHOLD = 0.05
MIN_PAIRS = 30
LEVEL = 0.9

# Pay as you go (docs/concepts.md, docs/statistics.md): until a judge has shown value (at a trial checkpoint of
# at least MIN_PAIRS labelled pairs with its vote, the RELEASE_LEVEL interval's lower end > RELEASE: its votes
# carry signal), it may have voted the labelled pairs and LEAD_START + LEAD_PER_LABEL x labels more. Chosen by
# measurement (docs/benchmarks.md, `python -m benchmarks.judge_value --cpu-share ... --lead S,P --release R`):
# releasing only above THRESHOLD held a judge that explains ~8 % back for a whole long run (+3-6 % labels); above
# 0 it costs no measurable labels, and at the 98 % level (not the 90 % of the value shown) a judge without signal
# is rarely let loose by chance. The lead is what a worthless judge costs beyond its trial and bought nothing
# measurable: LEAD_START = 2 lets a judge show at once that it works (and its pace) before any label.
RELEASE = 0.0
RELEASE_LEVEL = 0.98
LEAD_START = 2
LEAD_PER_LABEL = 0.1

# The trial (issue 10's target: a judge with no signal costs <= 10 % of voting every pair, in runs of >= 200
# pairs). The stop rule above needs a median ~90 labelled pairs to stop a judge without signal, 10-45 % of a pool
# of 200-900 pairs. The trial asks for less: at checkpoints of p = trial_pairs(N), 2p, 4p, ... labelled pairs with
# its vote, a judge's votes must agree with the labels at one-sided TRIAL_LEVEL, or it is stopped
# (``stopped-worthless``, ``stopped_by: "trial"``); p is TRIAL_SHARE of the pool, within TRIAL_MIN..MIN_PAIRS,
# so what measuring a judge may cost is a share of what voting every pair would. Chosen by measurement
# (docs/benchmarks.md, `python -m benchmarks.judge_value --cpu-share ... --trial MIN,SHARE,LEVEL`).
TRIAL_MIN = 10
TRIAL_SHARE = 0.05
TRIAL_LEVEL = 0.85

JUDGE_BUDGETS = ("all", "auto")


def shown_valuable(v: JudgeValue, threshold: float = RELEASE, min_pairs: int = MIN_PAIRS) -> bool:
    """The judge has shown value for this run: on at least ``min_pairs`` labelled pairs with its vote, the lower
    end of its interval ``v`` (the service: at RELEASE_LEVEL) is above ``threshold`` (RELEASE = 0: the interval
    excludes 0, its votes carry signal)."""
    return v.n >= min_pairs and v.lower > threshold


def trial_pairs(n_pairs: int, minimum: int = TRIAL_MIN, share: float = TRIAL_SHARE) -> int:
    """The labelled pairs (with its vote) on which a judge not yet shown valuable must first show signal in a
    run of ``n_pairs`` pairs: floor(share x n_pairs), at least ``minimum`` and at most MIN_PAIRS."""
    return min(MIN_PAIRS, max(int(minimum), math.floor(share * int(n_pairs))))


def checkpoints(n_voted: int, n_pairs: int, minimum: int = TRIAL_MIN, share: float = TRIAL_SHARE) -> list[int]:
    """The trial's checkpoints reached with ``n_voted`` labelled pairs voted by the judge: p, 2p, 4p, ... <=
    n_voted with p = trial_pairs(n_pairs)."""
    k, out = trial_pairs(n_pairs, minimum, share), []
    while k <= n_voted:
        out.append(k)
        k *= 2
    return out


def agrees(v: JudgeValue, level: float = TRIAL_LEVEL) -> bool:
    """The judge's votes agree with the labels at one-sided ``level``: Fisher's z of their correlation r on n
    pairs, atanh(r) sqrt(n - 3), exceeds the standard normal ``level`` quantile (the test behind the interval of
    sampler/judge_value.py, one-sided). One-sided because a vote is P(tuned better) by contract: a judge whose
    votes run against the labels is broken for this run (its calibration could flip it, but it is not what it
    claims to be), and the test spends its whole error rate on the side that matters -- at the same chance of
    passing a judge without signal (1 - level) it passes a useful one more often than the two-sided test."""
    if level <= 0:          # no test (benchmarks: the trial turned off)
        return True
    r = v.correlation
    if v.n < 4 or not math.isfinite(r):
        return False
    return math.atanh(min(r, 1.0 - 1e-12)) * math.sqrt(v.n - 3) > NormalDist().inv_cdf(level)


@dataclass(frozen=True)
class Trial:
    """Where a judge stands at its trial's checkpoints: ``failed`` (its votes did not agree with the labels at a
    checkpoint: stop it) and ``shown`` (its value's RELEASE_LEVEL interval on the pairs of the latest checkpoint
    with at least MIN_PAIRS; None before that checkpoint) -- see ``trial``."""

    failed: bool
    shown: JudgeValue | None


def trial(labels: np.ndarray, votes: np.ndarray, n_pairs: int, minimum: int = TRIAL_MIN,
          share: float = TRIAL_SHARE, level: float = TRIAL_LEVEL, release_level: float = RELEASE_LEVEL,
          min_pairs: int = MIN_PAIRS) -> Trial:
    """The trial of a judge under the auto budget, on its labelled pairs with its vote (``labels``, ``votes``
    in the order the labels were processed; pairs without its vote skipped) in a run of ``n_pairs`` pairs.

    At each checkpoint k = p, 2p, 4p, ... (``checkpoints``), on the first k of those pairs: its votes must agree
    with the labels at one-sided ``level`` (``agrees``), else the trial is failed (the judge is stopped); and
    the latest checkpoint with k >= ``min_pairs`` decides whether it has shown value (``shown_valuable`` of its
    ``release_level`` interval: pay as you go lets it vote freely). The service uses the defaults; simulations
    pass others.

    Why checkpoints and not every batch: a judge without signal passes one look with probability 1 - level, and
    is let loose at one look with probability ~(1 - RELEASE_LEVEL) / 2. Looked at every batch it would be let
    loose at some look in ~11 % of runs (tests/unit/test_judge_budget_lead.py) and voted the whole pool; at
    doubling checkpoints it gets a handful of looks, each on mostly new pairs, so each is a fresh chance to catch
    it and few are chances to free it, while a judge with signal is judged on ever more pairs. Like the stop
    rule, a function of processed labels and of votes only: the confidence sequence stays valid."""
    keep = ~np.isnan(np.asarray(votes, dtype=float))
    y, x = np.asarray(labels, dtype=float)[keep], np.asarray(votes, dtype=float)[keep]
    shown = None
    for k in checkpoints(int(y.size), n_pairs, minimum, share):
        v = judge_value(x[:k], y[:k], release_level)      # its correlation (what agrees tests) has no level
        if not agrees(v, level):
            return Trial(True, None)
        if k >= min_pairs:
            shown = v
    return Trial(False, shown)


def allowance(v: JudgeValue | None, labels: int, start: int = LEAD_START, per_label: float = LEAD_PER_LABEL,
              threshold: float = RELEASE, min_pairs: int = MIN_PAIRS) -> int | None:
    """How many pairs a judge under the auto budget may have voted in all, with ``labels`` labelled pairs
    processed and its value ``v`` on them (the service: its interval at RELEASE_LEVEL): None (no limit) once it
    has shown value, else labels + start + floor(per_label * labels) (the service: LEAD_START, LEAD_PER_LABEL,
    RELEASE, MIN_PAIRS; simulations pass others) -- every labelled pair (each one measures it) and a bounded lead
    on the labels (the pairs whose votes save labels if it turns out to pay).

    A function of the processed labels and of the votes only (never of a pending draw): the same argument as for
    the stop rule keeps the confidence sequence valid (docs/statistics.md)."""
    if v is not None and shown_valuable(v, threshold, min_pairs):
        return None
    return int(labels) + int(start) + math.floor(per_label * int(labels))


def horizon(rt: RunRuntime) -> int:
    """How many of the overall comparison's draws every question still running has processed. On one draw
    sequence (a family run) a criterion or slice question may lag the overall one (its label is missing); a stop
    decided on an overall label it has not processed yet could change the votes of its own next refit through
    that draw, so the stop rule and the pipeline's "labelled first" look only this far."""
    ov = rt.comps.get(OVERALL)
    if ov is None:
        return 0
    family = getattr(rt, "family", None)
    lagging = [c.processed for c in family.comps.values() if not c.finished] if family is not None else []
    return min([ov.processed, *lagging])


def _labelled_votes(comp: Comparison | None, upto: int | None = None) -> tuple[np.ndarray, np.ndarray] | None:
    """(labels, votes (m, J)) of the overall comparison's processed draws (the first ``upto`` of them);
    None without comparison or judges."""
    if comp is None or comp.votes.shape[1] == 0:
        return None
    items = [d.item for d in comp.draws[: comp.processed if upto is None else min(upto, comp.processed)]]
    unique = list(dict.fromkeys(items))      # with replacement a pair can recur: its first draw counts
    labels = np.array([comp.labels[i] for i in unique], dtype=float)
    votes = comp.votes_received()[np.asarray(unique, dtype=int)] if unique else np.empty((0, comp.votes.shape[1]))
    return labels, votes


def _judge_labelled_votes(meta: dict, comp: Comparison | None, upto: int | None, name: str
                          ) -> tuple[np.ndarray, np.ndarray] | None:
    """(labels, judge ``name``'s votes) of the overall comparison's first ``upto`` processed draws; None without
    comparison or when ``name`` is not one of the run's judges."""
    names = list(meta.get("judge_names") or [])
    got = _labelled_votes(comp, upto)
    if got is None or name not in names:
        return None
    return got[0], got[1][:, names.index(name)]


def values(meta: dict, comp: Comparison | None, upto: int | None = None
           ) -> tuple[dict[str, JudgeValue], JudgeValue | None, int]:
    """({judge: value}, the jury's value, labels processed) on the overall comparison's labels so far (its
    first ``upto`` processed draws)."""
    names = list(meta.get("judge_names") or [])
    got = _labelled_votes(comp, upto)
    if got is None or not names:
        return {}, None, 0
    labels, votes = got
    per = {n: judge_value(votes[:, j], labels, LEVEL) for j, n in enumerate(names)}
    return per, jury_value(votes, labels, LEVEL), int(labels.size)


def work(rt: RunRuntime, name: str) -> dict:
    """The judge's work record in meta (created on first use)."""
    w = rt.meta.setdefault("judge_work", {})
    return w.setdefault(name, {"pairs": 0, "cpu_s": 0.0, "state": "running"})


def _finite(x: float) -> float | None:
    """JSON has no infinity: a judge that explains every label saves unboundedly many (None)."""
    return round(x, 2) if math.isfinite(x) else None


def _view(v: JudgeValue, labels: int, rec: dict | None, n_pairs: int = 0) -> dict[str, Any]:
    saved, saved_lo, saved_hi = v.labels_saved(labels)
    out: dict[str, Any] = {
        "value": round(v.r2, 4), "interval": [round(v.lower, 4), round(v.upper, 4)], "level": v.level,
        "labels": v.n, "labels_saved": _finite(saved), "labels_saved_interval": [_finite(saved_lo), _finite(saved_hi)],
    }
    if rec is not None:
        out.update(cpu_s=round(float(rec.get("cpu_s", 0.0)), 3), pairs_voted=int(rec.get("pairs", 0)),
                   state=rec.get("state", "running"))
        if rec.get("pairs_allowed") is not None:
            out["pairs_allowed"] = int(rec["pairs_allowed"])
        done, wall = int(rec.get("pairs", 0)), float(rec.get("wall_s", 0.0))
        if out["state"] == "running" and "pairs_allowed" not in out and done and wall > 0 and n_pairs:
            # at the judge's pace so far; the pairs it still has to vote (a stop or the verdict may come first)
            out["eta_s"] = round(wall / done * max(0, n_pairs - done), 1)
        if rec.get("stopped_at_labels") is not None:
            out["stopped_at_labels"] = rec["stopped_at_labels"]
            if rec.get("stopped_by"):         # "value" (the stop rule) or "trial" (no signal at a checkpoint)
                out["stopped_by"] = rec["stopped_by"]
            if rec.get("stopped_value"):      # the value the stop was decided on (labels may have come since)
                out["stopped_at_interval"] = [round(x, 4) for x in rec["stopped_value"]["interval"]]
    return out


def judges_value(rt: RunRuntime) -> dict[str, Any]:
    """The status field ``judges_value``: per judge and ``"jury"`` (call under ``rt.lock``)."""
    return judges_value_of(rt.meta, rt.comps.get(OVERALL), rt.n_voted, len(rt.pair_ids), horizon(rt))


def _allowance_on(labels: np.ndarray, votes: np.ndarray, n_pairs: int) -> int | None:
    """Pay as you go's allowance of a judge with ``votes`` on the processed ``labels`` (its trial decides whether
    it has shown value) in a run of ``n_pairs`` pairs."""
    return allowance(trial(labels, votes, n_pairs).shown, int(labels.size))


def _allowances(meta: dict, comp: Comparison | None, upto: int | None) -> dict[str, int | None]:
    """{judge: allowance} of the auto budget's pay as you go on the first ``upto`` processed draws ({} under
    budget "all")."""
    if meta.get("judge_budget", "all") != "auto":
        return {}
    names = list(meta.get("judge_names") or [])
    got = _labelled_votes(comp, upto)
    if got is None or comp is None:
        return {n: allowance(None, 0) for n in names}
    labels, votes = got
    return {n: _allowance_on(labels, votes[:, j], comp.votes.shape[0]) for j, n in enumerate(names)}


def room(rt: RunRuntime, name: str) -> int | None:
    """How many more pairs the pipeline may vote with judge ``name`` now: None = no limit (budget "all", or a
    judge that has shown value); else its allowance less the pairs it has voted (0: it waits for labels; a judge
    no longer running gets 0 too, and the pipeline's next stop check ends it). Call under ``rt.lock``."""
    if rt.meta.get("judge_budget", "all") != "auto":
        return None
    rec = (rt.meta.get("judge_work") or {}).get(name) or {"pairs": 0, "state": "running"}
    if rec.get("state", "running") != "running":
        return 0
    comp = rt.comps.get(OVERALL)
    got = _judge_labelled_votes(rt.meta, comp, horizon(rt), name)   # this judge only: it runs every 0.2 s when held
    a = allowance(None, 0) if got is None or comp is None else _allowance_on(*got, comp.votes.shape[0])
    return None if a is None else max(0, a - int(rec.get("pairs", 0)))


def judges_value_of(meta: dict, comp: Comparison | None, n_voted: int, n_pairs: int = 0,
                    upto: int | None = None) -> dict[str, Any]:
    """``judges_value`` from a run's meta and overall comparison (the report renders it from its copy);
    ``upto``: the draws every running question has processed (``horizon``), on which pay as you go is decided."""
    names = list(meta.get("judge_names") or [])
    if not names:
        return {}
    per, jury, labels = values(meta, comp)
    supplied = not meta.get("judges")
    allowed = {} if supplied else _allowances(meta, comp, upto)
    out: dict[str, Any] = {}
    for n in names:
        rec: dict[str, Any] = ({"pairs": n_voted, "cpu_s": 0.0, "state": "supplied"} if supplied
                               else (meta.get("judge_work") or {}).get(n)
                               or {"pairs": 0, "cpu_s": 0.0, "state": "running"})
        a = allowed.get(n)
        if a is not None and rec.get("state", "running") == "running":
            done = int(rec.get("pairs", 0))
            # held back: it may vote up to `pairs_allowed` until more labels come; at it (and pairs left): waiting
            rec = {**rec, "pairs_allowed": a,
                   "state": "waiting-for-labels" if done >= a and done < n_pairs else "running"}
        out[n] = _view(per.get(n) or JudgeValue(0, 0.0, 0.0, 1.0, LEVEL, float("nan")), labels, rec, n_pairs)
    if jury is not None and len(names) > 1:
        out["jury"] = _view(jury, labels, None)
    return out


def record_batch(rt: RunRuntime, name: str, pairs: int, cpu_s: float, wall_s: float = 0.0) -> bool:
    """Add one batch's work to the judge's record; with ``judge_budget: "auto"`` apply the stop rule. Returns
    whether the pipeline should keep voting with this judge (call under ``rt.lock``; the caller writes meta)."""
    rec = work(rt, name)
    rec["pairs"] = int(rec["pairs"]) + int(pairs)
    rec["cpu_s"] = float(rec["cpu_s"]) + float(cpu_s)
    rec["wall_s"] = float(rec.get("wall_s", 0.0)) + float(wall_s)
    if rec["state"] != "running":
        return False
    if rt.comps and all(c.finished for c in rt.comps.values()):
        # every verdict is final: nothing more is drawn, so no vote can change anything (any budget)
        rec.update(state="stopped-decided")
        return False
    if rt.meta.get("judge_budget", "all") != "auto":
        return True
    comp = rt.comps.get(OVERALL)
    got = _judge_labelled_votes(rt.meta, comp, horizon(rt), name)
    if got is None or comp is None:
        return True
    labels, votes = got
    v = judge_value(votes, labels, LEVEL)
    stopped_by = ("value" if worthless(v, THRESHOLD, MIN_PAIRS)
                  else "trial" if trial(labels, votes, comp.votes.shape[0]).failed else None)
    if stopped_by is None:
        return True
    rec.update(state="stopped-worthless", stopped_by=stopped_by, stopped_at_labels=int(labels.size),
               stopped_value=v.to_dict())
    return False


def stopped(rt: RunRuntime) -> set[str]:
    """Judges the auto budget has stopped (they never vote again in this run, also after a restart)."""
    return {n for n, r in (rt.meta.get("judge_work") or {}).items()
            if r.get("state") in ("stopped-worthless", "stopped-decided")}


def finish(rt: RunRuntime, names: list[str]) -> None:
    """Judging is over: every judge still running has voted every pair."""
    for n in names:
        rec = work(rt, n)
        if rec["state"] == "running":
            rec["state"] = "finished"
