"""Real small GGUF judges through xllamacpp, and the OpenAI backend against xllamacpp's own HTTP server.

Plumbing only: no test asserts that a tiny model is right.
"""

import math
import os

import pytest

pytestmark = pytest.mark.integration

xllamacpp = pytest.importorskip("xllamacpp")

from tiebreak.judges.backends import BackendError, OpenAIBackend, make_backend  # noqa: E402
from tiebreak.judges.cache import MemoryVoteCache  # noqa: E402
from tiebreak.judges.jury import Judge, Jury  # noqa: E402

Q = "What is 2 + 2?"
GOOD, BAD = "2 + 2 = 4.", "2 + 2 = 5."


class Counting:
    """Counts calls into a real backend (to observe cache hits)."""

    def __init__(self, inner):
        self.inner, self.name, self.calls = inner, inner.name, 0

    def generate(self, prompts, **kw):
        return self.inner.generate(prompts, **kw)

    def choice_logprobs(self, prompt, choices):
        self.calls += 1
        return self.inner.choice_logprobs(prompt, choices)


@pytest.fixture(scope="session")
def qwen():
    os.environ.setdefault("TIEBREAK_THREADS", "2")
    try:
        return make_backend({"backend": "gguf", "preset": "qwen2.5-coder-0.5b", "n_ctx": 1024})
    except RuntimeError as e:  # packaged weights not installed
        pytest.skip(str(e))


@pytest.fixture(scope="session")
def gemma():
    try:
        return make_backend({"backend": "gguf", "preset": "gemma-3-270m-base", "n_ctx": 512})
    except RuntimeError as e:
        pytest.skip(str(e))


def test_generate_returns_text(qwen):
    out = qwen.generate(["Reply with the word hello.", "Name a colour."], max_tokens=6)
    assert len(out) == 2 and all(isinstance(s, str) and s.strip() for s in out)


def test_choice_logprobs_from_one_pass(qwen, gemma):
    for be in (qwen, gemma):
        s = be.choice_logprobs("Is the sky blue? Answer yes or no.", ["yes", "no"])
        assert set(s) == {"yes", "no"}
        assert any(math.isfinite(v) for v in s.values())
        assert all(v <= 1e-6 for v in s.values())
        assert sum(math.exp(v) for v in s.values()) <= 1.0 + 1e-6


def test_swap_symmetry_and_cache_hits(qwen):
    be = Counting(qwen)
    cache = MemoryVoteCache()
    jury = Jury([Judge(be, max_chars=200), Judge(be, mode="pointwise", max_chars=200)], cache)
    v, vp = jury.vote_pair(Q, BAD, GOOD)
    assert be.calls == 4
    assert 0.0 <= v.p_tuned_better <= 1.0 and all(0 <= p <= 1 for p in v.p_by_order)
    assert v.swap_inconsistency == pytest.approx(abs(v.p_by_order[0] - v.p_by_order[1]))
    w, wp = jury.vote_pair(Q, GOOD, BAD)  # same four prompts, roles swapped: all from the cache
    assert be.calls == 4 and w.cached and wp.cached
    assert w.p_tuned_better == pytest.approx(1 - v.p_tuned_better, abs=1e-9)
    assert wp.p_tuned_better == pytest.approx(1 - vp.p_tuned_better, abs=1e-9)
    # recomputing without the vote cache gives nearly the same vote; llama.cpp's KV prompt-cache reuse
    # changes batch splits, so it is not bit-identical (measured differences up to ~0.01)
    fresh = Judge(be, max_chars=200).vote(Q, GOOD, BAD)
    assert fresh.p_tuned_better == pytest.approx(w.p_tuned_better, abs=0.05)
    assert be.calls == 6


def test_openai_backend_over_real_http(qwen):
    api = OpenAIBackend(qwen.base_url, "qwen", timeout=60, concurrency=2)
    out = api.generate(["Reply with the word hello.", "Name a colour."], max_tokens=6)
    assert len(out) == 2 and all(s.strip() for s in out)
    prompt = "Is the sky blue? Answer yes or no."
    http = api.choice_logprobs(prompt, ["yes", "no"])
    local = qwen.choice_logprobs(prompt, ["yes", "no"])
    for k in ("yes", "no"):
        if math.isfinite(local[k]):
            assert http[k] == pytest.approx(local[k], abs=0.05)
    v = Judge(api, max_chars=200).vote(Q, BAD, GOOD)
    assert 0.0 <= v.p_tuned_better <= 1.0


def test_openai_backend_clear_error_when_unreachable():
    api = OpenAIBackend("http://127.0.0.1:9/v1", "m", timeout=2, max_retries=1)
    api.backoff = 0.01
    with pytest.raises(BackendError, match="failed after 2 attempts"):
        api.generate(["hi"], max_tokens=1)


def test_rubric_questions_reuse_the_cached_prefix(qwen):
    """Rubric mode asks its questions about one response back to back; llama.cpp's prompt cache evaluates
    the shared prefix (system, question, response) once, so each further question costs a fraction of the
    first. CPU-seconds (not wall time) so that other load on the machine does not decide the outcome."""
    import time

    calls = []

    class Timed(Counting):
        def choice_logprobs(self, prompt, choices):
            c0 = time.process_time()
            out = super().choice_logprobs(prompt, choices)
            calls.append(time.process_time() - c0)
            return out

    long = " ".join(f"Step {i}: add {i} to the running total and write the total down." for i in range(25))
    j = Judge(Timed(qwen), mode="rubric", max_chars=1500)
    scores, _secs, cpu, hit = j.rubric_scores("Sum the numbers from 1 to 25 step by step.", long)
    assert not hit and set(scores) == set(j.rubric) and all(0.0 <= p <= 1.0 for p in scores.values())
    assert len(calls) == len(j.rubric) and cpu == pytest.approx(sum(calls), rel=0.2, abs=0.05)
    assert max(calls[1:]) < 0.6 * calls[0], calls
    v = j.vote("What is 2 + 2?", BAD, GOOD)
    assert 0.0 <= v.p_tuned_better <= 1.0 and len(v.extra) == len(j.rubric) and v.cpu_seconds > 0


def test_prompt_format_defaults_from_the_file_and_a_base_model_continues_plain_text(qwen, gemma):
    """Issue 10 item 5: a base model has no chat template; prompted through llama.cpp's ChatML fallback its
    answer echoes the template's tokens, prompted as plain text it continues the text."""
    assert (qwen.prompt_format, gemma.prompt_format) == ("chat", "completion")
    prompt = "The capital of France is"
    chat = gemma.generate([prompt], max_tokens=12, prompt_format="chat")[0]
    plain = gemma.generate([prompt], max_tokens=12)[0]
    assert "<|im_" in chat                      # the failure the default avoids
    assert "<|im_" not in plain and plain.strip()
    assert qwen.generate(["Reply with the word hello."], max_tokens=6)[0].strip()  # chat, as before


@pytest.mark.slow  # two spawned processes each import the stack and load a model: ~40 s on 2 loaded cores
def test_prevote_in_two_processes_fills_the_cache_evaluate_then_reads(tmp_path):
    """judge-eval --workers 2: two worker processes (own model copy, 1 thread each) vote every pair into the
    shared sqlite cache; evaluate afterwards computes nothing and gets the same votes as one process would."""
    from tiebreak.judges.cache import SqliteVoteCache
    from tiebreak.judges.evaluate import evaluate, prevote
    from tiebreak.judges.jury import judges_from_names

    items = [{"question": f"What is {i} + {i}?", "response_a": f"{i} + {i} = {2 * i}.",
              "response_b": f"{i} + {i} = {2 * i + 1}.", "human_label": "AB"[i % 2]} for i in range(4)]
    names = ["gemma-3-270m-base:pointwise", "feature:length"]
    kw = {"max_chars": 200}
    try:
        judges_from_names(names[:1], **kw)
    except RuntimeError as e:
        pytest.skip(str(e))
    path = tmp_path / "votes.sqlite"
    pre = prevote(items, names, path, workers=2, judge_kwargs=kw, injection_limit=2, cores=2)
    assert pre["workers"] == 2 and pre["threads_per_worker"] == 1 and pre["votes"] == 4 and pre["cpu_seconds"] > 0
    cache = SqliteVoteCache(path)
    assert len(cache) >= 8   # two responses per pair (plus any injected re-vote)
    judges = judges_from_names(names, **kw)
    n_cached = len(cache)
    serial = [judges[0].vote(it["question"], it["response_a"], it["response_b"], "overall", cache) for it in items]
    res = evaluate(items, judges, cache=cache, injection_limit=2, progress=False)
    assert all(v.cached for v in serial) and len(cache) >= n_cached
    assert res["judges"]["gemma-3-270m-base:pointwise"]["n"] == 4
