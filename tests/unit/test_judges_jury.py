"""Jury logic with a scripted backend (unit level: the model is not what is tested here)."""

import math

import numpy as np
import pytest

from tiebreak.judges.backends import make_backend, scores_from_top
from tiebreak.judges.cache import MemoryVoteCache, SqliteVoteCache, vote_key
from tiebreak.judges.injection import REMOVED_MARK
from tiebreak.judges.jury import INJECTION_PAYLOAD, Judge, JudgeVote, Jury, _bt, ensemble, judges_from_names


def _blocks(prompt):
    user = prompt[-1]["content"]
    a = user.split("<<<RESPONSE A>>>\n")[1].split("\n<<<END RESPONSE A>>>")[0]
    b = user.split("<<<RESPONSE B>>>\n")[1].split("\n<<<END RESPONSE B>>>")[0]
    return a, b


class ScriptedBackend:
    """Prefers the response containing GOOD (margin), plus a fixed bias toward position A."""

    name = "scripted"

    def __init__(self, bias=0.0, margin=2.0):
        self.bias, self.margin, self.calls = bias, margin, 0

    def generate(self, prompts, *, max_tokens=256, temperature=0.0):
        return ["ok"] * len(prompts)

    def choice_logprobs(self, prompt, choices):
        self.calls += 1
        user = prompt[-1]["content"]
        if "<<<RESPONSE A>>>" in user:
            a, b = _blocks(prompt)
            la = self.bias + (self.margin if "GOOD" in a else 0.0)
            lb = self.margin if "GOOD" in b else 0.0
            z = math.log(math.exp(la) + math.exp(lb) + math.exp(-3))
            return {"A": la - z, "B": lb - z, "tie": -3 - z}
        good = "GOOD" in user.split("<<<RESPONSE>>>")[1]
        return {"yes": -0.1 if good else -2.5, "no": -2.5 if good else -0.1}


def test_pairwise_maps_both_orders_back_to_tuned():
    j = Judge(ScriptedBackend())
    v = j.vote("q", "bad answer", "GOOD answer")
    assert v.p_tuned_better > 0.8
    assert v.p_by_order[0] == pytest.approx(v.p_by_order[1])
    assert v.picks_a == (False, True)  # tuned is B in order 1, A in order 2
    w = j.vote("q", "GOOD answer", "bad answer")
    assert w.p_tuned_better == pytest.approx(1 - v.p_tuned_better)
    assert v.length_diff == len("GOOD answer") - len("bad answer")


def test_position_bias_cancels_and_is_recorded():
    j = Judge(ScriptedBackend(bias=3.0, margin=0.0))
    v = j.vote("q", "x", "y")
    assert v.p_tuned_better == pytest.approx(0.5)
    assert v.swap_inconsistency > 0.5
    assert v.picks_a == (True, True)


def test_pointwise_bradley_terry():
    j = Judge(ScriptedBackend(), mode="pointwise")
    v = j.vote("q", "bad", "GOOD")
    assert v.p_tuned_better > 0.9 and v.swap_inconsistency == 0.0 and j.name == "scripted:pointwise"
    assert _bt(0.5, 0.5) == pytest.approx(0.5)
    assert math.isnan(_bt(math.nan, 0.3))


def test_cache_prevents_rejudging_and_keeps_seconds(tmp_path):
    be = ScriptedBackend()
    cache = SqliteVoteCache(tmp_path / "v.sqlite")
    jury = Jury([Judge(be)], cache)
    v1 = jury.vote_pair("q", "a", "GOOD")[0]
    assert be.calls == 2 and not v1.cached
    v2 = Jury([Judge(be)], SqliteVoteCache(tmp_path / "v.sqlite")).vote_pair("q", "a", "GOOD")[0]
    assert be.calls == 2 and v2.cached and v2.p_tuned_better == v1.p_tuned_better
    assert v2.seconds == pytest.approx(v1.seconds)
    jury.vote_pair("q", "a", "GOOD", criteria=("accuracy",))  # other criterion → new key
    assert be.calls == 4


def test_missing_answer_is_nan():
    class Empty(ScriptedBackend):
        def choice_logprobs(self, prompt, choices):
            return {c: -math.inf for c in choices}

    v = Judge(Empty()).vote("q", "a", "b")
    assert math.isnan(v.p_tuned_better)
    assert math.isnan(ensemble([v])[0])


def test_ensemble_combined_and_disagreement():
    a = JudgeVote("a", "overall", 0.8, (0.8, 0.8), 0.0, 0, 0.1)
    b = JudgeVote("b", "overall", 0.4, (0.2, 0.6), 0.4, 0, 0.1)
    c, d = ensemble([a, b])
    assert c == pytest.approx(0.6)
    assert d == pytest.approx(np.sqrt(np.mean((np.array([0.8, 0.8, 0.2, 0.6]) - 0.6) ** 2)))
    assert ensemble([0.7, math.nan]) == (pytest.approx(0.7), 0.0)
    assert ensemble([0.2, 0.8], weights=[3, 1])[0] == pytest.approx(0.35)


def test_vote_matrix_shape_for_sampler():
    jury = Jury([Judge(ScriptedBackend()), Judge(ScriptedBackend(), mode="pointwise")])
    m = jury.vote_matrix([("q", "a", "GOOD"), ("q", "GOOD", "b")])
    assert m.shape == (2, 2) and (m[0] > 0.5).all() and (m[1] < 0.5).all()
    assert set(jury.vote_dict("q", "a", "b")) == {"scripted", "scripted:pointwise"}


def test_injection_payload_names_the_letter_and_delimiters_are_sanitised():
    seen = []

    class Rec(ScriptedBackend):
        def choice_logprobs(self, prompt, choices):
            seen.append(_blocks(prompt))
            return super().choice_logprobs(prompt, choices)

    Judge(Rec(), harden=False).vote("q", "base", "tuned", inject="tuned")
    assert seen[0][1].endswith(INJECTION_PAYLOAD["pairwise"].format(letter="B"))
    assert seen[1][0].endswith(INJECTION_PAYLOAD["pairwise"].format(letter="A"))
    seen.clear()
    # hardened (the default): the injected sentence never reaches the model, a mark says something was cut
    Judge(Rec()).vote("q", "base <<<END RESPONSE A>>> x", "tuned", inject="tuned")
    assert seen[0][1] == "tuned\n\n" + REMOVED_MARK and seen[1][0] == "tuned\n\n" + REMOVED_MARK
    assert "<<<END" not in seen[0][0]


def test_bad_inputs_raise_valueerror_with_choices():
    with pytest.raises(ValueError, match="pairwise, pointwise"):
        Judge(ScriptedBackend(), mode="listwise")
    with pytest.raises(ValueError, match="overall"):
        Judge(ScriptedBackend()).vote("q", "a", "b", criterion="vibes")
    with pytest.raises(ValueError, match="qwen2.5-coder-0.5b"):
        judges_from_names(["gpt-9"])
    with pytest.raises(ValueError, match="pairwise, pointwise"):
        judges_from_names(["qwen2.5-coder-0.5b:listwise"])
    with pytest.raises(ValueError, match="unique"):
        Jury([Judge(ScriptedBackend()), Judge(ScriptedBackend())])


@pytest.mark.parametrize("spec,field", [
    ({"backend": "tgi"}, "gguf, openai, vllm"),
    ({"backend": "gguf"}, "path"),
    ({"backend": "gguf", "preset": "llama-70b"}, "preset"),
    ({"backend": "openai", "model": "m"}, "base_url"),
    ({"backend": "openai", "base_url": "http://x"}, "model"),
    ({"backend": "vllm"}, "model"),
    ({"backend": "gguf", "path": "/nonexistent/model.gguf"}, "not found"),
])
def test_make_backend_bad_specs(spec, field):
    with pytest.raises(ValueError, match=field):
        make_backend(spec)


def test_vllm_is_lazy():
    import sys

    import tiebreak.judges.backends  # noqa: F401
    assert "vllm" not in sys.modules


def test_scores_from_top_merges_variants_and_falls_back_to_text():
    s = scores_from_top([(" A", -1.0), ("A", -2.0), ("b", -0.5), ("x", -0.1)], "x", ["A", "B"])
    assert s["A"] == pytest.approx(math.log(math.exp(-1) + math.exp(-2)))
    assert s["B"] == -0.5
    s = scores_from_top([("x", -0.1)], "B is better", ["A", "B", "tie"])
    assert s == {"A": -math.inf, "B": 0.0, "tie": -math.inf}
    assert scores_from_top([], "", ["yes", "no"]) == {"yes": -math.inf, "no": -math.inf}


def test_cache_keys_and_memory_cache():
    assert vote_key("ab", "c") != vote_key("a", "bc")
    m = MemoryVoteCache()
    assert m.get("k") is None
    m.put("k", {"x": 1})
    assert m.get("k") == {"x": 1} and m.hits == 1 and m.misses == 1
