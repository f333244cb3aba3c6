"""Model and judge specs: the one parser (the CLI, the pipeline and experiments all use it).

A MODEL spec (DESIGN.md) is an object ``{"backend": "gguf"|"openai"|"vllm", ...}``; the CLI also accepts a
short string form (``parse_model``). A judge is a preset name ``PRESET[:MODE]``, a ``.gguf`` path, a free
text-feature juror ``feature:NAME``, or a MODEL spec object with an optional ``"mode"``.

Bad specs raise ``SpecError`` (a ``ValueError``) whose ``field`` names the offending field; the service turns
it into a 422 naming that field, the CLI into an ``error:`` line. Nothing here loads a model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

MODEL_BACKENDS = ("gguf", "openai", "vllm")


class SpecError(ValueError):
    """A model or judge spec we cannot use; ``field`` names it (e.g. ``judges[0]``, ``base.backend``)."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message


# ----------------------------------------------------------------------------------------------- models
def parse_model(text: str, field: str = "model") -> dict:
    """The CLI's MODEL string -> a MODEL spec: a preset, a .gguf path, ``openai:MODEL@URL``,
    ``vllm:MODEL[+LORA_DIR]`` or a JSON object."""
    s = text.strip()
    if not s:
        raise SpecError(field, "empty model spec")
    if s.startswith("{"):
        try:
            d = json.loads(s)
        except json.JSONDecodeError as e:
            raise SpecError(field, f"model spec is not valid JSON: {e.msg}") from None
        if not isinstance(d, dict):
            raise SpecError(field, "a JSON model spec must be an object")
        return d
    if s.startswith("openai:"):
        model, sep, url = s[len("openai:"):].partition("@")
        if not sep or not model or not url.startswith(("http://", "https://")):
            raise SpecError(field, f"{text!r}: write openai:MODEL@http://host:port/v1")
        return {"backend": "openai", "model": model, "base_url": url}
    if s.startswith("vllm:"):
        model, _, lora = s[len("vllm:"):].partition("+")
        if not model:
            raise SpecError(field, f"{text!r}: write vllm:MODEL or vllm:MODEL+LORA_DIR")
        return {"backend": "vllm", "model": model, **({"lora": lora} if lora else {})}
    from tiebreak.judges.models import PRESETS

    if s in PRESETS:
        return {"backend": "gguf", "preset": s}
    if s.endswith(".gguf"):
        if not Path(s).expanduser().exists():
            raise SpecError(field, f"GGUF file not found: {s}")
        return {"backend": "gguf", "path": str(Path(s).expanduser().resolve())}
    raise SpecError(field, f"unknown model {text!r}: give a preset ({', '.join(sorted(PRESETS))}), a .gguf path, "
                           "openai:MODEL@URL, vllm:MODEL[+LORA] or a JSON spec")


def check_model(field: str, spec: Any, allow_outputs: bool = True) -> dict:
    """A MODEL spec object (or, with ``allow_outputs``, ``{"outputs": {...}}``: pre-generated outputs)."""
    if not isinstance(spec, dict):
        raise SpecError(field, "must be an object: a model spec {backend, ...}"
                               + (" or {outputs: {prompt_id: text}}" if allow_outputs else ""))
    if allow_outputs and "outputs" in spec:
        return spec
    b = spec.get("backend")
    if b not in MODEL_BACKENDS:
        raise SpecError(f"{field}.backend", f"must be one of {', '.join(MODEL_BACKENDS)} (got {b!r})")
    return spec


def model_of_name(model: str) -> dict:
    """A judge's MODEL part (preset or .gguf path) as a MODEL spec."""
    return {"backend": "gguf", "path": model} if model.endswith(".gguf") else {"backend": "gguf", "preset": model}


# ----------------------------------------------------------------------------------------------- judges
def judge_problem(spec: Any) -> str | None:
    """None when ``spec`` names a judge we can build; otherwise the reason (no model is loaded)."""
    from tiebreak.judges.backends import BACKENDS
    from tiebreak.judges.jury import MODES
    from tiebreak.judges.models import PRESETS

    if isinstance(spec, str):
        if spec.startswith("feature:"):
            from tiebreak.judges.features import FEATURES

            feat = spec.removeprefix("feature:")
            return None if feat in FEATURES else (f"unknown feature {feat!r}; valid choices: "
                                                  f"{', '.join('feature:' + f for f in FEATURES)}")
        model, _, mode = spec.partition(":")
        if mode and mode not in MODES:
            return f"mode {mode!r} is invalid; valid choices: {', '.join(MODES)}"
        if model not in PRESETS and not model.endswith(".gguf"):
            return (f"unknown judge {model!r}; valid choices: {', '.join(sorted(PRESETS))} or a path to a .gguf "
                    "file, optionally followed by ':pointwise'")
        return None
    if isinstance(spec, dict):
        kind = spec.get("backend", "gguf")
        if kind not in BACKENDS:
            return f"'backend' = {kind!r} is invalid; valid choices: {', '.join(BACKENDS)}"
        if spec.get("mode", "pairwise") not in MODES:
            return f"'mode' must be one of {', '.join(MODES)}"
        if kind == "gguf" and not (spec.get("preset") in PRESETS or spec.get("path")):
            return f"a gguf judge needs 'preset' ({', '.join(sorted(PRESETS))}) or 'path'"
        if kind in ("openai", "vllm") and not spec.get("model"):
            return f"a {kind} judge needs 'model'"
        if kind == "openai" and not spec.get("base_url"):
            return "an openai judge needs 'base_url'"
        return None
    return "a judge is a preset name (string) or a MODEL spec (object)"


def check_judge(field: str, spec: Any) -> None:
    """Raise SpecError naming ``field`` when ``spec`` is not a judge we can build."""
    why = judge_problem(spec)
    if why:
        raise SpecError(field, why)


def judge_name(spec: Any) -> str:
    """The column name of a judge's votes (matches judges.jury's naming)."""
    if isinstance(spec, str):
        model, _, mode = spec.partition(":")
        base = Path(model).stem if model.endswith(".gguf") else model
        return base if mode in ("", "pairwise") else f"{base}:{mode}"
    kind = spec.get("backend", "gguf")
    if spec.get("name"):
        base = spec["name"]
    elif kind == "gguf":
        base = spec.get("preset") or Path(spec["path"]).stem
    else:
        base = f"{kind}:{spec['model']}"
    mode = spec.get("mode", "pairwise")
    return base if mode == "pairwise" else f"{base}:{mode}"


def judge_model(spec: Any) -> tuple[dict, str]:
    """(MODEL spec, mode) of a model judge (a string ``MODEL[:MODE]`` or an object with ``mode``)."""
    if isinstance(spec, str):
        model, _, mode = spec.partition(":")
        return model_of_name(model), (mode or "pairwise")
    return {k: v for k, v in spec.items() if k != "mode"}, spec.get("mode", "pairwise")
