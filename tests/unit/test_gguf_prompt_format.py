"""GGUF metadata (chat template) and the MODEL spec's prompt_format: read from a GGUF header written here."""

from __future__ import annotations

import struct

import pytest
from pydantic import ValidationError

from tiebreak.judges.backends import (
    default_prompt_format,
    gguf_metadata_string,
    make_backend,
    prompt_format_problem,
)
from tiebreak.services.api.models import RunCreate


def _s(text: str) -> bytes:
    b = text.encode()
    return struct.pack("<Q", len(b)) + b


def _gguf(path, entries: list[tuple[str, int, bytes]], version: int = 3) -> str:
    """A GGUF header with the given (key, value type, encoded value) entries and no tensors."""
    with open(path, "wb") as f:
        f.write(b"GGUF" + struct.pack("<IQQ", version, 0, len(entries)))
        for key, kind, value in entries:
            f.write(_s(key) + struct.pack("<I", kind) + value)
    return str(path)


def _vocab(n: int) -> bytes:   # an array of strings, as tokenizer.ggml.tokens
    return struct.pack("<IQ", 8, n) + b"".join(_s(f"tok{i}") for i in range(n))


COMMON = [("general.architecture", 8, _s("llama")), ("llama.block_count", 4, struct.pack("<I", 2)),
          ("tokenizer.ggml.tokens", 9, _vocab(300)), ("tokenizer.ggml.scores", 9, struct.pack("<IQ", 6, 3) +
                                                       struct.pack("<3f", 0.1, 0.2, 0.3)),
          ("tokenizer.ggml.add_bos_token", 7, b"\x01"), ("general.file_type", 10, struct.pack("<Q", 15))]


def test_chat_template_found_after_the_vocabulary(tmp_path):
    p = _gguf(tmp_path / "instruct.gguf", [*COMMON, ("tokenizer.chat_template", 8, _s("{{ messages }}"))])
    assert gguf_metadata_string(p, "tokenizer.chat_template") == "{{ messages }}"
    assert gguf_metadata_string(p, "general.architecture") == "llama"
    assert gguf_metadata_string(p, "llama.block_count") is None     # not a string
    assert default_prompt_format(p) == "chat"


def test_no_chat_template_means_completion(tmp_path):
    p = _gguf(tmp_path / "base.gguf", COMMON)
    assert gguf_metadata_string(p, "tokenizer.chat_template") is None
    assert default_prompt_format(p) == "completion"


def test_not_a_gguf_file_is_refused(tmp_path):
    p = tmp_path / "x.gguf"
    p.write_bytes(b"NOPE" + bytes(20))
    with pytest.raises(ValueError, match="not a GGUF file"):
        gguf_metadata_string(p, "tokenizer.chat_template")


def test_prompt_format_is_validated_naming_the_field_and_choices():
    assert prompt_format_problem({"backend": "gguf", "preset": "x"}) is None
    assert prompt_format_problem({"preset": "x", "prompt_format": "completion"}) is None
    assert "valid choices: chat, completion" in prompt_format_problem({"preset": "x", "prompt_format": "raw"})
    assert "gguf models only" in prompt_format_problem({"backend": "openai", "prompt_format": "chat"})
    with pytest.raises(ValueError, match="prompt_format"):
        make_backend({"backend": "gguf", "path": "/nonexistent.gguf", "prompt_format": "raw"})
    with pytest.raises(ValidationError, match="prompt_format") as e:
        RunCreate.model_validate({"name": "g", "generate": {
            "base": {"backend": "gguf", "preset": "gemma-3-270m-base", "prompt_format": "plain"},
            "tuned": {"backend": "gguf", "preset": "gemma-3-270m-base"}, "prompts": [{"id": "a", "text": "hi"}]}})
    assert e.value.errors()[0]["loc"] == ("generate", "base")
