"""Label Studio and Argilla connectors (plain functions; the router in services/api/integrations.py).

Label Studio (formats: labelstud.io/guide/task_format, /guide/webhook_reference):
  * tasks: ``{"data": {run_id, pair_id, prompt, left, right}, "predictions": [{"model_version", "score",
    "result": []}]}`` — ``score`` is the sampler's priority (1 = label first), so sorting LS's Data Manager by
    prediction score makes its queue follow the sampler.
  * labeling config: ``LABEL_CONFIG`` (Choices ``verdict`` = left/right/tie, one ``criterion_<c>`` per criterion).
  * webhooks ``ANNOTATION_CREATED`` / ``ANNOTATION_UPDATED``: ``{"action", "annotation": {"id", "result":
    [{"from_name", "type": "choices", "value": {"choices": [...]}}], "completed_by": id | {"id", "email"}},
    "task": {"id", "data": {...}}, "project": {...}}``. The annotator is ``ls:<completed_by id>``.
Argilla 2.x (docs.argilla.io: records, suggestions, webhooks_internals):
  * records: ``{"id": pair_id, "fields": {prompt, left, right}, "metadata": {run_id, pair_id, priority},
    "suggestions": [...]}`` — suggestions (the judges' consensus, in the blind left/right orientation) only
    when asked for: they show annotators the judges' opinion, which can anchor them.
  * webhook ``response.created`` (Standard Webhooks envelope ``{"type", "version", "timestamp", "data"}``,
    data = the response: ``{"id", "status", "values": {"verdict": {"value": "left"}}, "record": {"id",
    "external_id"?, "metadata": {...}, "fields": {...}}, "user": {"id", "username"}}``. Only ``submitted``
    responses count. The annotator is ``argilla:<user id or username>``.
Both tools post a verdict once per (pair, annotator); a repeat or an update is accepted and counted once (the
first verdict stands: it may already be inside the confidence sequence).
"""

from __future__ import annotations

import math
from typing import Any

from services.errors import BadInput

VERDICTS = ("left", "right", "tie")


def label_config(criteria: list[str]) -> str:
    crit = "".join(
        f'\n  <Header value="{c}"/>\n  <Choices name="criterion_{c}" toName="prompt" choice="single">'
        '\n    <Choice value="left"/><Choice value="right"/><Choice value="tie"/>\n  </Choices>'
        for c in criteria)
    return ('<View>\n  <Text name="prompt" value="$prompt"/>\n  <Header value="Left"/>\n'
            '  <Text name="left" value="$left"/>\n  <Header value="Right"/>\n  <Text name="right" value="$right"/>\n'
            '  <Choices name="verdict" toName="prompt" choice="single" required="true">\n'
            '    <Choice value="left" hotkey="1"/><Choice value="right" hotkey="2"/><Choice value="tie" hotkey="0"/>'
            f"\n  </Choices>{crit}\n</View>")


def _blind(pair: dict) -> tuple[str, str]:
    return (pair["tuned"], pair["base"]) if pair["tuned_left"] else (pair["base"], pair["tuned"])


def ls_tasks(run_id: str, batch: list[tuple[dict, float, dict | None]]) -> list[dict]:
    out = []
    for pair, prio, _votes in batch:
        left, right = _blind(pair)
        out.append({"data": {"run_id": run_id, "pair_id": pair["id"], "prompt": pair["prompt"], "left": left,
                             "right": right},
                    "predictions": [{"model_version": "tiebreak-priority", "score": round(prio, 6), "result": []}]})
    return out


def _choice(result: list[dict], name: str) -> str | None:
    for r in result or []:
        if r.get("from_name") == name:
            ch = (r.get("value") or {}).get("choices") or []
            if ch:
                v = str(ch[0]).strip().lower()
                if v not in VERDICTS:
                    raise BadInput(f"choice {ch[0]!r} of {name!r} must be one of {', '.join(VERDICTS)}",
                                   "annotation.result")
                return v
    return None


def parse_ls_webhook(payload: dict) -> tuple[str, dict] | None:
    """(run_id, label) from a Label Studio annotation webhook; None for other actions / skipped tasks."""
    action = payload.get("action")
    if action not in ("ANNOTATION_CREATED", "ANNOTATION_UPDATED"):
        return None
    ann = payload.get("annotation")
    task = payload.get("task")
    if not isinstance(ann, dict) or not isinstance(task, dict):
        raise BadInput("a Label Studio annotation webhook carries 'annotation' and 'task' objects", "annotation")
    if ann.get("was_cancelled"):
        return None
    data = task.get("data") or {}
    run_id, pair_id = data.get("run_id"), data.get("pair_id")
    if not run_id or not pair_id:
        raise BadInput("task.data needs run_id and pair_id (import the tasks tiebreak exported)", "task.data")
    verdict = _choice(ann.get("result") or [], "verdict")
    if verdict is None:
        raise BadInput("annotation.result has no 'verdict' choice (use tiebreak's labeling config)",
                       "annotation.result")
    criteria = {}
    for r in ann.get("result") or []:
        fn = str(r.get("from_name", ""))
        if fn.startswith("criterion_"):
            v = _choice([r], fn)
            if v:
                criteria[fn[len("criterion_"):]] = v
    who = ann.get("completed_by")
    if isinstance(who, dict):
        who = who.get("id", who.get("email"))
    if who is None:
        raise BadInput("annotation.completed_by is missing", "annotation.completed_by")
    return str(run_id), {"pair_id": str(pair_id), "annotator": f"ls:{who}", "verdict": verdict,
                         "criteria": criteria or None, "lease_id": None, "source": "label-studio"}


def argilla_records(run_id: str, batch: list[tuple[dict, float, dict | None]], judge_names: list[str],
                    suggestions: bool = False) -> list[dict]:
    out = []
    for pair, prio, votes in batch:
        left, right = _blind(pair)
        rec: dict[str, Any] = {"id": pair["id"], "fields": {"prompt": pair["prompt"], "left": left, "right": right},
                               "metadata": {"run_id": run_id, "pair_id": pair["id"], "priority": round(prio, 6)}}
        if suggestions and votes and votes.get("overall"):
            ps = [p for p in votes["overall"] if p is not None and not math.isnan(p)]
            if ps:
                p_tuned = sum(ps) / len(ps)
                p_left = p_tuned if pair["tuned_left"] else 1 - p_tuned
                val = "tie" if abs(p_left - 0.5) < 0.05 else ("left" if p_left > 0.5 else "right")
                rec["suggestions"] = [{"question_name": "verdict", "value": val,
                                       "score": round(max(p_left, 1 - p_left), 4), "agent": "tiebreak-judges"}]
        out.append(rec)
    return out


def argilla_settings(criteria: list[str]) -> dict:
    """Dataset settings (fields + questions) matching the records above."""
    qs = [{"name": "verdict", "type": "label_selection", "labels": list(VERDICTS), "required": True}]
    qs += [{"name": f"criterion_{c}", "type": "label_selection", "labels": list(VERDICTS), "required": False}
           for c in criteria]
    return {"fields": [{"name": n, "type": "text"} for n in ("prompt", "left", "right")], "questions": qs}


def parse_argilla_webhook(payload: dict) -> tuple[str, dict] | None:
    if payload.get("type") != "response.created":
        return None
    data = payload.get("data")
    if not isinstance(data, dict):
        raise BadInput("an Argilla webhook carries the response in 'data'", "data")
    if data.get("status", "submitted") != "submitted":
        return None
    rec = data.get("record") or {}
    meta = rec.get("metadata") or {}
    run_id = meta.get("run_id")
    pair_id = meta.get("pair_id") or rec.get("external_id") or rec.get("id")
    if not run_id or not pair_id:
        raise BadInput("data.record.metadata needs run_id and pair_id (log the records tiebreak exported)",
                       "data.record.metadata")
    values = data.get("values") or {}

    def val(name: str) -> str | None:
        v = values.get(name)
        v = v.get("value") if isinstance(v, dict) else v
        if v is None:
            return None
        v = str(v).strip().lower()
        if v not in VERDICTS:
            raise BadInput(f"{name} = {v!r} must be one of {', '.join(VERDICTS)}", f"data.values.{name}")
        return v

    verdict = val("verdict")
    if verdict is None:
        raise BadInput("the response has no 'verdict' value", "data.values.verdict")
    criteria = {k[len("criterion_"):]: v for k in values if k.startswith("criterion_") and (v := val(k))}
    user = data.get("user") or {}
    who = user.get("id") or user.get("username") or data.get("user_id")
    if not who:
        raise BadInput("the response names no user", "data.user")
    return str(run_id), {"pair_id": str(pair_id), "annotator": f"argilla:{who}", "verdict": verdict,
                         "criteria": criteria or None, "lease_id": None, "source": "argilla"}
