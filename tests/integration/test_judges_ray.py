"""The Ray actor shell around JudgeWorker, with a real Ray (local, 2 CPUs) and the real Qwen-0.5B."""


import pytest

pytestmark = pytest.mark.integration
ray = pytest.importorskip("ray")
pytest.importorskip("xllamacpp")

PAIRS = [("What is 2+2?", "5", "4"), ("Capital of France?", "Paris", "Lyon"), ("Say hi", "hi", "hello")]


def test_plain_worker_and_ray_actors_agree(ray_local):
    from tiebreak.judges.actors import JudgeWorker, judge_with_actors

    try:
        w = JudgeWorker(["qwen2.5-coder-0.5b:pointwise"], n_threads=1)
    except RuntimeError as e:
        pytest.skip(str(e))
    local = w.vote_batch(PAIRS)
    assert len(local) == 3 and all(0 <= r[0]["p_tuned_better"] <= 1 for r in local)
    votes, secs = judge_with_actors(PAIRS, ["qwen2.5-coder-0.5b:pointwise"], n_actors=2)   # the session's Ray
    assert secs > 0 and len(votes) == 3
    for (_, base, tuned), a, b in zip(PAIRS, local, votes, strict=True):
        assert b[0]["judge"] == a[0]["judge"]
        assert b[0]["length_diff"] == len(tuned) - len(base)  # results come back in pair order
        # same model, other process and thread count: equal up to llama.cpp numerics (amplified by the
        # pointwise logit difference)
        assert b[0]["p_tuned_better"] == pytest.approx(a[0]["p_tuned_better"], abs=0.15)
