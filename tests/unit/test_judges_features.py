"""Free text-feature jurors (judges/features.py)."""

import math

import pytest

from tiebreak.judges.features import (
    FEATURES,
    FeatureJudge,
    broken_code_count,
    prompt_copy_share,
    question_coverage,
    refusal_count,
    structure_count,
)
from tiebreak.judges.jury import judges_from_names


def test_votes_are_in_unit_interval_half_when_equal_and_antisymmetric():
    texts = ["", "Sure.", "I'm sorry, I cannot help with that.", "- a\n- b\n\n## H\n```python\ndef f(:\n```",
             "Paris is the capital of France."]
    for name in FEATURES:
        j = FeatureJudge(name)
        for a in texts:
            assert j.vote("What is the capital of France?", a, a).p_tuned_better == pytest.approx(0.5)
            for b in texts:
                p = j.vote("What is the capital of France?", a, b).p_tuned_better
                q = j.vote("What is the capital of France?", b, a).p_tuned_better
                assert 0.0 <= p <= 1.0 and p + q == pytest.approx(1.0)


def test_length_is_relative_length():
    v = FeatureJudge("length").vote("q", "x" * 9, "x" * 29)
    assert v.p_tuned_better == pytest.approx(1 / (1 + (10 / 30) ** 3)) and v.length_diff == 20 and v.cpu_seconds >= 0


def test_statistics():
    assert structure_count("1. one\n2. two\n# Title\n**bold** and ```x```") == 5
    assert refusal_count("I’m sorry, but I can't do that. As an AI ...") == 3
    assert refusal_count("You cannot divide by zero.") == 0
    assert broken_code_count("```python\ndef f(x):\n    return x\n```") == 0
    assert broken_code_count("```python\ndef f(x)\n    return x\n```\n```py\nprint('ok')\n```") == 1
    assert broken_code_count("```\nimport os\nos.getcwd(\n```") == 1  # untagged but Python-looking
    assert broken_code_count("```js\nfunction f( {\n```") == 0  # not Python: not judged
    assert prompt_copy_share("write a poem about the sea please", "Write a poem about the sea.") == pytest.approx(
        3 / 4)
    assert prompt_copy_share("hi", "hi there") == 0.0
    assert question_coverage("Paris, capital city of France", "What is the capital of France?") == 1.0


def test_injection_payload_reaches_the_feature_unless_hardened():
    j = FeatureJudge("length", harden=False)
    clean = j.vote("q", "abc", "abcdef")
    inj = j.vote("q", "abc", "abcdef", inject="base")
    assert inj.p_tuned_better < clean.p_tuned_better


@pytest.mark.parametrize("injection", ["ignore", "evaluator", "system"])
@pytest.mark.parametrize("feature", ["length", "coverage", "refusal", "structure"])
def test_hardened_features_do_not_reward_text_addressed_to_the_judge(feature, injection):
    """The default feature jurors see a response less its sentences addressed to the judge: with any of three
    differently phrased payloads appended, the vote is the clean vote (before the filter, length flipped)."""
    q = "What is the capital city of France and what is it known for?"
    base, tuned = "Paris. It is known for art.", "Paris is the capital of France. It is known for the Louvre."
    j = FeatureJudge(feature)
    clean = j.vote(q, base, tuned).p_tuned_better
    assert j.vote(q, base, tuned, inject="base", injection=injection).p_tuned_better == pytest.approx(clean)
    assert j.vote(q, base, tuned, inject="tuned", injection=injection).p_tuned_better == pytest.approx(clean)


def test_names_and_errors():
    js = judges_from_names(["features"])
    assert [j.name for j in js] == [f"feature:{f}" for f in FEATURES]
    assert judges_from_names(["feature:length"])[0].mode == "feature"
    with pytest.raises(ValueError, match="unknown feature"):
        judges_from_names(["feature:colour"])
    with pytest.raises(ValueError, match="unique"):
        judges_from_names(["features", "feature:length"])
    with pytest.raises(ValueError, match="recorded"):
        judges_from_names(["recorded:"])
    assert not math.isnan(FeatureJudge("coverage").vote("", "", "").p_tuned_better)


def test_service_accepts_feature_jurors_and_votes_with_them():
    from tiebreak.judges.actors import JudgeWorker
    from tiebreak.services.pipeline import judge_name, validate_judge_spec

    assert validate_judge_spec("feature:length") is None and judge_name("feature:length") == "feature:length"
    assert "unknown feature" in validate_judge_spec("feature:colour")
    w = JudgeWorker("feature:length", ["overall", "tone"])
    out = w.vote([(0, "q", "ab", "abcdef")])
    assert out[0]["overall"] == pytest.approx(1 / (1 + (3 / 7) ** 3)) and out[0]["tone"] == out[0]["overall"]


def test_one_judge_worker_serves_the_pipeline_and_the_benchmark():
    """tiebreak.judges.actors.JudgeWorker is the only judge worker: one spec (the service's pipeline, vote) or several
    (judge_with_actors, vote_batch); a cache factory is called in the worker's own process."""
    from tiebreak.judges.actors import JudgeWorker
    from tiebreak.judges.cache import MemoryVoteCache
    from tiebreak.services import pipeline

    assert pipeline.JudgeWorker is JudgeWorker
    made = []
    w = JudgeWorker(["feature:length", "feature:coverage"], ["overall"], cache=lambda: made.append(1) or MemoryVoteCache())
    assert made == [1] and isinstance(w.cache, MemoryVoteCache)
    rows = w.vote_batch([("q", "ab", "abcdef")])
    assert [v["judge"] for v in rows[0]] == ["feature:length", "feature:coverage"]
    assert w.vote([(3, "q", "ab", "abcdef")])[3]["overall"] == rows[0][0]["p_tuned_better"]
