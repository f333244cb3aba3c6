"""One draw sequence for the overall question, criteria and slices (sampler.family); Holm's step-down."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binom

from benchmarks.shared_draws import (
    criterion_null_false_decisions,
    mixed_null_false_decisions,
    null_false_decisions,
    run_family,
    symmetrized_pool,
)
from tiebreak.sampler.confseq import BettingConfidenceSequence, candidate_grid
from tiebreak.sampler.decision import Decision
from tiebreak.sampler.engine import ComparisonConfig
from tiebreak.sampler.family import OVERALL, ComparisonFamily, holm_step_down
from tiebreak.sampler.slices import membership_matrix


def test_holm_step_down_rejects_in_order_and_reads_the_rest_at_the_next_step() -> None:
    p = np.array([0.04, 0.001, 0.012, 0.5])
    h = holm_step_down(p, 0.05)
    # sorted: 0.001 <= .05/4, 0.012 <= .05/3, 0.04 > .05/2: two rejected; the others read at .05/2
    assert h.rejected.tolist() == [False, True, True, False]
    assert h.levels.tolist() == pytest.approx([0.025, 0.0125, 0.05 / 3, 0.025])
    # rejects everything Bonferroni rejects
    rng = np.random.default_rng(0)
    for _ in range(200):
        p = rng.uniform(0, 0.05, 8) ** 2
        assert np.all(holm_step_down(p, 0.05).rejected >= (p <= 0.05 / 8))


def test_one_sided_p_values_agree_with_the_confidence_sequence() -> None:
    rng = np.random.default_rng(1)
    alpha = 0.05
    cs = BettingConfidenceSequence(alpha, candidate_grid(40, (0.5,)))
    n, total = 60, 0.0
    for t in range(40):
        y = float(rng.random() < 0.8)
        rem = n - t
        cs.update(y, (n * cs.grid - total) / rem, 0.0, 1.0, n / rem, mean_lo=0.0, mean_hi=1.0)
        total += y
        p_plus, p_minus = cs.one_sided_p_values(0.5)
        assert (p_plus <= alpha / 2) == cs.is_excluded_below(0.5)
        assert (p_minus <= alpha / 2) == cs.is_excluded_above(0.5)
        assert cs.interval_at(alpha / 2, alpha / 2) == cs.interval()
    assert cs.one_sided_p_values(0.5)[0] < alpha / 2       # it got there
    again = BettingConfidenceSequence.from_dict(cs.to_dict())
    assert again.one_sided_p_values(0.3) == cs.one_sided_p_values(0.3)
    old = cs.to_dict()
    del old["max_log"]                       # a state saved before the running max was kept
    older = BettingConfidenceSequence.from_dict(old)
    assert older.interval() == cs.interval()
    for m in (0.3, 0.5, 0.7):                # today's capital stands in: never a smaller p-value
        assert all(a >= b for a, b in zip(older.one_sided_p_values(m), cs.one_sided_p_values(m), strict=True))


def graded_pool(rng: np.random.Generator, n: int = 300):
    """A worse slice (edge), a better one (billing), a criterion correlated with the overall label."""
    tags = [["edge"] if i < 100 else ["billing"] for i in range(n)]
    y = (rng.random(n) < np.where(np.arange(n) < 100, 0.25, 0.75)).astype(float)
    yc = np.where(rng.random(n) < 0.7, y, (rng.random(n) < 0.6).astype(float))
    votes = np.clip(0.2 + 0.6 * y[:, None] + rng.normal(0, 0.25, (n, 2)), 0, 1)
    return tags, y, yc, votes


def make_family(multiplicity: str = "holm", seed: int = 2, method: str = "active"):
    tags, y, yc, votes = graded_pool(np.random.default_rng(1))
    names, member = membership_matrix(tags)
    fam = ComparisonFamily.create({OVERALL: votes, "accuracy": votes}, ComparisonConfig(
        alpha=0.05, method=method, grid_resolution=100), np.random.default_rng(seed), slices=(names, member),
        multiplicity=multiplicity)
    return fam, y, yc


def test_every_question_follows_the_same_draws_and_no_pair_is_drawn_for_one_question() -> None:
    fam, y, yc = make_family()
    asked: list[int] = []
    while not fam.finished:
        items = fam.next_items(2)
        if not items:
            break
        asked += items
        for i in items[::-1]:
            # one label serves every question still running (both, until one of them is finished)
            assert fam.needs(i) == [n for n, c in fam.comps.items() if not c.finished] != []
            fam.record_labels(i, {OVERALL: y[i], "accuracy": yc[i]})
    draws = [d.item for d in fam.leader.draws]
    assert [d.item for d in fam.comps["accuracy"].draws] == draws
    assert sorted(asked) == sorted(draws)            # every draw handed out once, to every question
    st = fam.status()
    assert st.question(OVERALL, "edge").decision is Decision.WORSE
    assert st.question(OVERALL, "billing").decision is Decision.BETTER
    assert st.question(OVERALL).decision is Decision.BETTER
    assert all(q.decision.final for q in st.questions)
    assert st.draws < len(y)


def test_a_missing_criterion_label_makes_that_question_wait_never_skip() -> None:
    fam, y, yc = make_family(method="classical")
    items = fam.next_items(3)
    for i in items:
        fam.record_labels(i, {OVERALL: y[i]})
    assert fam.leader.processed == 3 and fam.comps["accuracy"].processed == 0
    assert fam.pending_items() == items
    fam.record_labels(items[2], {"accuracy": yc[items[2]]})   # a later one first: still waits for the first
    assert fam.comps["accuracy"].processed == 0
    fam.record_labels(items[0], {"accuracy": yc[items[0]]})
    assert fam.comps["accuracy"].processed == 1
    with pytest.raises(ValueError, match="unknown question"):
        fam.record_labels(items[1], {"tone": 1.0})


def test_criterion_observation_under_the_shared_design_is_exactly_unbiased() -> None:
    """Enumerate the next draw of the overall (active) design: the criterion's prediction-powered observation,
    built with the overall design's probability pi_t, averages exactly to the mean of the criterion's labels
    over the undrawn pairs, and pi_t sums to 1 over them."""
    fam, y, yc = make_family(method="active")
    for _ in range(40):
        for i in fam.next_items(1):
            fam.record_labels(i, {OVERALL: y[i], "accuracy": yc[i]})
    lead, crit = fam.leader, fam.comps["accuracy"]
    lead.sampler.set_scores(np.random.default_rng(3).uniform(0.05, 1.0, len(y)))  # strongly non-uniform
    drawn = np.zeros(len(y), dtype=bool)
    drawn[[d.item for d in lead.draws]] = True
    live = np.flatnonzero(~drawn)
    pi = np.array([lead.sampler.probability(int(i)) for i in live])
    assert pi.sum() == pytest.approx(1.0, abs=1e-12)
    g = crit.g
    assert np.ptp(g) > 0  # the criterion's own calibration is in use
    x = g[live].sum() / live.size + (yc[live] - g[live]) / (live.size * pi)
    assert float(np.sum(pi * x)) == pytest.approx(yc[live].mean(), abs=1e-12)
    # and the draw the family makes carries exactly that probability to the criterion
    item = fam.next_items(1)
    d = crit.draws[-1]
    assert d == lead.draws[-1] and d.prob == pytest.approx(pi[live.tolist().index(d.item)], rel=1e-12)
    assert item == [d.item]


def test_after_the_overall_verdict_draws_serve_only_running_questions() -> None:
    fam, y, yc = make_family(method="classical")
    member = fam.leader.slices.member
    overall_at = None
    while not fam.finished:
        items = fam.next_items(1)
        if not items:
            break
        if overall_at is None and fam.leader.decision.final:
            overall_at = len(fam.leader.draws) - 1
        if overall_at is not None:
            running_pool = any(not c.decision.final for c in fam.comps.values())
            running_slices = {k for c in fam.comps.values() for k in c.slices.running()}
            assert running_pool or member[items[0], sorted(running_slices)].any()
        fam.record_labels(items[0], {OVERALL: y[items[0]], "accuracy": yc[items[0]]})
    assert overall_at is not None and overall_at < len(fam.leader.draws)


@pytest.mark.parametrize("multiplicity", ["holm", "bonferroni"])
def test_state_round_trip_mid_run_continues_identically(multiplicity: str) -> None:
    fam, y, yc = make_family(multiplicity)
    pending: list[int] = []
    rng = np.random.default_rng(5)
    for _ in range(150):
        pending += fam.next_items(3 - len(pending))
        if not pending:
            break
        i = pending.pop(int(rng.integers(len(pending))))
        fam.record_labels(i, {OVERALL: y[i], "accuracy": yc[i]} if rng.random() < 0.8 else {OVERALL: y[i]})
    twin = ComparisonFamily.from_dict(fam.to_dict())
    assert twin.status() == fam.status()
    for f in (fam, twin):
        while not f.finished:
            todo = f.pending_items() or f.next_items(1)
            if not todo:
                break
            f.record_labels(todo[0], {OVERALL: y[todo[0]], "accuracy": yc[todo[0]]})
    assert twin.status() == fam.status()
    assert twin.leader.draws == fam.leader.draws


def test_holm_gives_verdicts_bonferroni_would_not_on_the_same_evidence() -> None:
    """Same seed, same draws until the first verdict Holm gives earlier; every verdict is at least as early."""
    seen = {}
    for mult in ("bonferroni", "holm"):
        fam, y, yc = make_family(mult, seed=7, method="classical")
        first: dict = {}
        while not fam.finished:
            items = fam.next_items(1)
            if not items:
                break
            fam.record_labels(items[0], {OVERALL: y[items[0]], "accuracy": yc[items[0]]})
            for q in fam.status().questions:
                if q.decision.final:
                    first.setdefault((q.criterion, q.slice), len(fam.leader.draws))
        seen[mult] = first
    earliest = min(seen["holm"].values())
    assert earliest == min(seen["bonferroni"].values())       # the first verdict is Bonferroni's own
    assert sum(seen["holm"].values()) < sum(seen["bonferroni"].values())


def test_family_rejects_with_replacement_and_requires_overall_first() -> None:
    with pytest.raises(ValueError, match="start with"):
        ComparisonFamily.create({"accuracy": None}, ComparisonConfig(), n_items=5)
    with pytest.raises(ValueError, match="without-replacement"):
        ComparisonFamily.create({OVERALL: None}, ComparisonConfig(design="with-replacement"), n_items=5)
    with pytest.raises(ValueError, match="multiplicity"):
        ComparisonFamily.create({OVERALL: None}, ComparisonConfig(), n_items=5, multiplicity="bh")


def test_criterion_on_the_shared_active_design_stays_valid_where_ignoring_pi_would_not() -> None:
    """theta = theta_c = 1/2, the active design favours the pairs whose criterion label is 1. With the shared
    pi_t: 3 false of 40 at alpha 0.3 when measured; a criterion weighting its draws as uniform (a mutation of
    ComparisonFamily.next_items) made 37 of 40 runs false, so this fails if the weights are wrong."""
    row = criterion_null_false_decisions(60, 0.3, seed=3)
    assert row["active_share_of_batches"] > 0.5, row   # the design really is non-uniform
    assert row["runs_with_a_false_verdict"] <= binom.ppf(0.999, 60, 0.3), row


def test_symmetrized_null_with_slices_and_criteria_family_wise_error() -> None:
    """Every theta (3 questions x (pool + 3 slices)) is 1/2; labels in batches of 4, answered shuffled, runs go
    to the end (the pool is usually exhausted)."""
    row = null_false_decisions(80, "active", 0.3, seed=21, multiplicity="holm")
    assert row["runs_with_a_false_verdict"] <= binom.ppf(0.999, 80, 0.3), row


def test_holm_stays_valid_on_null_slices_beside_strong_effects() -> None:
    """Holm's later, looser steps are reached here (14 better verdicts a run come first), and only the verdicts
    on the two null slices can be wrong: the runs with one stay within alpha."""
    row = mixed_null_false_decisions(60, "classical", 0.3, seed=22, multiplicity="holm")
    assert row["better_verdicts_on_effects_per_run"] > 10, row
    assert row["runs_with_a_false_verdict"] <= binom.ppf(0.999, 60, 0.3), row


@pytest.mark.slow
@pytest.mark.parametrize("multiplicity", ["holm", "bonferroni"])
def test_mixed_null_1000_runs(multiplicity: str) -> None:
    row = mixed_null_false_decisions(1000, "classical", 0.05, seed=16, multiplicity=multiplicity)
    assert row["runs_with_a_false_verdict"] <= binom.ppf(0.999, 1000, 0.05), row


@pytest.mark.slow
@pytest.mark.parametrize("multiplicity", ["holm", "bonferroni"])
def test_design_correlated_null_1000_runs(multiplicity: str) -> None:
    row = criterion_null_false_decisions(1000, 0.05, seed=15, multiplicity=multiplicity)
    assert row["runs_with_a_false_verdict"] <= binom.ppf(0.999, 1000, 0.05), row


@pytest.mark.slow
@pytest.mark.parametrize("method", ["classical", "active"])
@pytest.mark.parametrize("multiplicity", ["holm", "bonferroni"])
def test_symmetrized_null_with_slices_and_criteria_1000_runs(method: str, multiplicity: str) -> None:
    row = null_false_decisions(1000, method, 0.05, seed=14, multiplicity=multiplicity)
    assert row["runs_with_a_false_verdict"] <= binom.ppf(0.999, 1000, 0.05), row


def test_batches_shuffled_to_exhaustion_on_a_symmetrized_pool_finish_every_question() -> None:
    rng = np.random.default_rng(3)
    tags, ys, votes = symmetrized_pool(rng)
    fam, _ = run_family(tags, ys, votes, "active", 0.05, rng, "holm", batch=5)
    assert fam.finished and all(q.decision.final for q in fam.status().questions)


def test_added_pairs_reach_every_question_and_start_a_new_version() -> None:
    fam = ComparisonFamily.create({OVERALL: None, "accuracy": None}, ComparisonConfig(method="classical"),
                                  np.random.default_rng(0), slices=(["a"], np.arange(20)[:, None] < 10), n_items=20)
    fam.add_items(4, slice_member=np.ones((4, 1), dtype=bool))        # before any draw: the pool just grows
    assert all(c.n_items == 24 and c.pool_version == 0 for c in fam.comps.values())
    for _ in range(3):
        i = fam.next_items(1)[0]
        fam.record_labels(i, {OVERALL: 1.0, "accuracy": 1.0})
    fam.add_items(2)
    assert all(c.n_items == 26 and c.pool_version == 1 for c in fam.comps.values())
    assert fam.status().question("accuracy", "a").n_items == 14
