"""One definition of three-way agreement (judges.evaluate.three_way_agreement), used by `judge-eval` and by the
run report (services/report.py, which used a 0.4-0.6 tie band before)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tiebreak.judges.evaluate import three_way_agreement, verdict
from tiebreak.services.report import judge_rows


def test_tie_only_at_one_half_and_sides_as_verdict():
    votes = [0.51, 0.49, 0.5, math.nan, 0.55, 0.2]
    human = [1.0, 0.0, 0.5, 0.5, 0.5, 1.0]
    # judge: tuned, base, tie, tie (missing), tuned, base -> agrees on the first four
    assert three_way_agreement(votes, human) == pytest.approx(4 / 6)
    side = {"B": 1.0, "A": 0.0, "tie": 0.5}
    assert [side[verdict(v)] for v in votes] == [1.0, 0.0, 0.5, 0.5, 1.0, 0.0]
    assert math.isnan(three_way_agreement([], []))
    with pytest.raises(ValueError, match="length"):
        three_way_agreement([0.5], [0.5, 1.0])


def test_the_run_report_uses_the_same_definition():
    # local judges vote within ~0.01 of 1/2: a tie band would call all of these ties
    rng = np.random.default_rng(3)
    votes = 0.5 + rng.uniform(-0.02, 0.02, 40)
    human = rng.choice([0.0, 0.5, 1.0], 40)
    row, = judge_rows(votes.reshape(-1, 1), ["j"], {i: float(y) for i, y in enumerate(human)})
    assert row.three_way_agreement == pytest.approx(three_way_agreement(votes, human))
    assert row.three_way_agreement != pytest.approx(float(np.mean(human == 0.5)))   # not "share of human ties"
