"""Validation of experiment input (the API's pydantic models check shapes; these check meaning, naming the
field of the first problem): a new experiment's body -> its stored record, and outputs {prompt_id: text}."""

from __future__ import annotations

import time
import uuid
from dataclasses import asdict
from typing import Any

from tiebreak.judges.spec import SpecError, check_judge, check_model
from tiebreak.services.experiments.errors import ExperimentError
from tiebreak.services.experiments.signal import SignalRule


def check_model_field(field_name: str, spec: Any) -> dict:
    try:
        return check_model(field_name, spec)
    except SpecError as e:
        raise ExperimentError(e.field, e.message) from None


def check_judge_field(field_name: str, j: Any) -> None:
    """A judge as for POST /v1/runs: PRESET[:MODE], a .gguf path, feature:NAME or a MODEL spec."""
    try:
        check_judge(field_name, j)
    except SpecError as e:
        raise ExperimentError(e.field, e.message) from None


def experiment_record(body: Any, validate_judges: bool = True) -> dict:
    """The stored record of a new experiment (id, cleaned prompts, rule, ...) or ExperimentError naming the
    field. ``validate_judges`` False: judge names are labels of supplied votes (the replay benchmark)."""
    if not isinstance(body, dict):
        raise ExperimentError("body", "must be a JSON object")
    name = body.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ExperimentError("name", "required, a non-empty string")
    prompts = body.get("prompts")
    if not isinstance(prompts, list) or not prompts:
        raise ExperimentError("prompts", "required, a non-empty list of {id, text}")
    seen: set[str] = set()
    clean = []
    for i, p in enumerate(prompts):
        if not isinstance(p, dict) or not isinstance(p.get("text"), str) or p.get("id") is None:
            raise ExperimentError(f"prompts[{i}]", "must be {id, text} with a string text")
        pid = str(p["id"])
        if pid in seen:
            raise ExperimentError(f"prompts[{i}].id", f"duplicate prompt id {pid!r}")
        seen.add(pid)
        clean.append({"id": pid, "text": p["text"]})
        tags = p.get("slices")
        if tags is not None:
            if not isinstance(tags, list) or not all(isinstance(t, str) and t.strip() for t in tags):
                raise ExperimentError(f"prompts[{i}].slices", "must be a list of non-empty strings")
            clean[-1]["slices"] = list(dict.fromkeys(tags))
    if "base" not in body:
        raise ExperimentError("base", "required: a model spec or {outputs: {prompt_id: text}}")
    base = check_model_field("base", body["base"])
    judges = body.get("judges", [])
    if judges is None:
        judges = []
    if not isinstance(judges, list) or not all((isinstance(j, str) and j) or isinstance(j, dict) for j in judges):
        raise ExperimentError("judges", "must be a list of judge presets or MODEL specs ([] = labels only)")
    for i, j in enumerate(judges if validate_judges else []):
        check_judge_field(f"judges[{i}]", j)
    alpha = body.get("alpha", 0.05)
    if not isinstance(alpha, int | float) or not 0 < alpha < 1:
        raise ExperimentError("alpha", f"must lie in (0, 1) (got {alpha!r})")
    margin = body.get("margin", 0.0)
    if not isinstance(margin, int | float) or not 0 <= margin < 0.5:
        raise ExperimentError("margin", f"must lie in [0, 0.5) (got {margin!r})")
    bpc = body.get("budget_per_checkpoint")
    if bpc is not None and (not isinstance(bpc, int) or bpc < 1):
        raise ExperimentError("budget_per_checkpoint", f"must be a positive integer (got {bpc!r})")
    judge_budget = body.get("judge_budget", "all") or "all"
    if judge_budget not in ("all", "auto"):
        raise ExperimentError("judge_budget", f'must be "all" or "auto" (got {judge_budget!r})')
    webhook = body.get("webhook")
    if webhook is not None and (not isinstance(webhook, str) or not webhook.startswith(("http://", "https://"))):
        raise ExperimentError("webhook", "must be an http(s) URL")
    rule = SignalRule(patience=body.get("patience", 2) if body.get("patience") is not None else 2,
                      target_margin=body.get("target_margin"), budget=body.get("budget"),
                      undecided_is_plateau=bool(body.get("undecided_is_plateau", True)),
                      protect_slices=check_protect_slices(body.get("protect_slices"), clean))
    carry = body.get("carry_calibration", True)
    if not isinstance(carry, bool):
        raise ExperimentError("carry_calibration", f"must be true or false (got {carry!r})")
    base_outputs = None
    if "outputs" in base:
        base_outputs = check_outputs("base.outputs", base["outputs"], clean)
    exp_id = "exp_" + uuid.uuid4().hex[:12]
    rec = {"experiment": exp_id, "name": name.strip(), "prompts": clean, "judges": judges,
           "alpha": float(alpha), "margin": float(margin), "budget_per_checkpoint": bpc,
           "rule": asdict(rule), "webhook": webhook, "method": body.get("method"), "carry_calibration": carry,
           "judge_budget": judge_budget,
           "base": None if base_outputs is not None else base,
           "outputs": {"base": base_outputs} if base_outputs is not None else {},
           "checkpoints": [], "last_signal": None, "created_at": time.time()}
    return rec


def check_protect_slices(names: Any, prompts: list[dict]) -> tuple[str, ...]:
    if names is None:
        return ()
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise ExperimentError("protect_slices", "must be a list of slice names")
    present = {t for p in prompts for t in p.get("slices") or []}
    unknown = [n for n in names if n not in present]
    if unknown:
        raise ExperimentError("protect_slices", f"no prompt carries slice(s) {unknown}; the prompts' slices are "
                                                f"{sorted(present) or 'none'}")
    return tuple(dict.fromkeys(names))

def check_outputs(field_name: str, outputs: Any, prompts: list[dict]) -> dict[str, str]:
    if not isinstance(outputs, dict):
        raise ExperimentError(field_name, "must be an object {prompt_id: text}")
    out = {str(k): v for k, v in outputs.items()}
    missing = [p["id"] for p in prompts if p["id"] not in out]
    if missing:
        raise ExperimentError(field_name, f"missing outputs for prompt id(s) {', '.join(missing[:5])}"
                                          f"{' ...' if len(missing) > 5 else ''}")
    bad = [k for k, v in out.items() if not isinstance(v, str)]
    if bad:
        raise ExperimentError(f"{field_name}.{bad[0]}", "must be a string")
    return {p["id"]: out[p["id"]] for p in prompts}
