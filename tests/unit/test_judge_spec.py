"""judges/spec.py: the one parser of model and judge specs (CLI, pipeline, experiments); errors name the field."""

from __future__ import annotations

import pytest

from tiebreak.judges.spec import SpecError, check_judge, check_model, judge_model, judge_name, parse_model


@pytest.mark.parametrize("text,want", [
    ("gemma-3-270m-base", {"backend": "gguf", "preset": "gemma-3-270m-base"}),
    ("openai:m@http://h:1/v1", {"backend": "openai", "model": "m", "base_url": "http://h:1/v1"}),
    ("vllm:Qwen/Q+./lora", {"backend": "vllm", "model": "Qwen/Q", "lora": "./lora"}),
    ('{"backend": "vllm", "model": "x"}', {"backend": "vllm", "model": "x"}),
])
def test_parse_model(text, want):
    assert parse_model(text) == want


@pytest.mark.parametrize("text,needle", [("", "empty"), ("openai:m", "openai:MODEL@"), ("vllm:", "vllm:MODEL"),
                                         ("{oops", "not valid JSON"), ("gpt-17", "unknown model"),
                                         ("/nope/x.gguf", "GGUF file not found")])
def test_parse_model_errors_name_the_field(text, needle):
    with pytest.raises(SpecError) as e:
        parse_model(text, "--tuned")
    assert e.value.field == "--tuned" and needle in e.value.message and str(e.value).startswith("--tuned: ")


def test_check_model_and_judge_name_the_field():
    assert check_model("base", {"outputs": {"a": "x"}}) == {"outputs": {"a": "x"}}
    with pytest.raises(SpecError) as e:
        check_model("base", {"backend": "hf"})
    assert e.value.field == "base.backend"
    with pytest.raises(SpecError) as e:
        check_model("model", {"outputs": {}}, allow_outputs=False)
    assert e.value.field == "model.backend"
    for bad in ("gpt-9", "qwen2.5-coder-0.5b:sideways", "feature:colour", {"backend": "openai", "model": "m"}, 3):
        with pytest.raises(SpecError) as e:
            check_judge("judges[0]", bad)
        assert e.value.field == "judges[0]"
    for good in ("qwen2.5-coder-0.5b:pointwise", "x/y.gguf", "feature:length", {"backend": "gguf", "preset": "gemma-3-270m-base"}):
        check_judge("judges[0]", good)


def test_judge_names_and_models():
    assert judge_name("dir/m.gguf:pointwise") == "m:pointwise" and judge_name("qwen2.5-coder-0.5b") == "qwen2.5-coder-0.5b"
    assert judge_name({"backend": "openai", "model": "g", "base_url": "http://h"}) == "openai:g"
    assert judge_model("a.gguf:pointwise") == ({"backend": "gguf", "path": "a.gguf"}, "pointwise")
    assert judge_model({"backend": "vllm", "model": "m", "mode": "rubric"}) == ({"backend": "vllm", "model": "m"}, "rubric")
