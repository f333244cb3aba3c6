"""tiebreak.sampler.calibration.prior_calibration: the one fit of a carried calibration (the replay's prior_from_pools and
the service's calibration_from both call it). Its validity as a prior is tested in test_sampler_audit.py
(test_false_decisions_at_most_alpha_with_a_carried_prior_batched_shuffled_exhausting)."""

from __future__ import annotations

import numpy as np
import pytest

from tiebreak.sampler.calibration import PRIOR_PENALTY, fit_calibration, judge_features, prior_calibration
from tiebreak.sampler.replay import ReplayPool, prior_from_pools


def test_prior_from_pools_is_prior_calibration_on_the_pools_mean_votes():
    rng = np.random.default_rng(0)
    pools = []
    for n in (30, 50):
        y = rng.integers(0, 2, size=n).astype(float)
        jv = np.column_stack([np.clip(y * 0.6 + 0.2 + rng.normal(0, 0.1, n), 0, 1), rng.uniform(size=n)])
        jv[rng.uniform(size=n) < 0.1, 1] = np.nan
        pools.append(ReplayPool(tuple(np.array([v, v]) for v in y), jv))
    votes = np.vstack([p.judge_votes for p in pools])
    labels = np.concatenate([[v.mean() for v in p.votes] for p in pools])
    cal = prior_calibration(votes, labels)
    assert prior_from_pools(pools) == cal
    assert cal == fit_calibration(judge_features(votes), labels, PRIOR_PENALTY)
    assert cal.n_labels == 80 and cal.coef[0] > 0.2 and cal.variance_ratio > 1.5


@pytest.mark.parametrize("votes, labels, words", [
    (np.zeros((3, 1)), np.zeros(2), "one label per pair"),
    (np.zeros(3), np.zeros(3), "one label per pair"),
    (np.zeros((0, 1)), np.zeros(0), "at least one"),
    (np.zeros((2, 1)), np.array([0.0, 1.5]), "[0, 1]"),
    (np.zeros((2, 1)), np.array([0.0, np.nan]), "[0, 1]"),
])
def test_prior_calibration_refuses_bad_input(votes, labels, words):
    with pytest.raises(ValueError, match=words.replace("[", r"\[").replace("]", r"\]")):
        prior_calibration(votes, labels)
