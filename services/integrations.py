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
from typing import Annotated, Any
from xml.sax.saxutils import quoteattr

from fastapi.exceptions import RequestValidationError
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from tiebreak.services.errors import BadInput

VERDICTS = ("left", "right", "tie")


def label_config(criteria: list[str]) -> str:
    """Label Studio's labeling config (XML). Criteria names are validated at run creation
    (services/api/models.py, CRITERION_PATTERN) and escaped here anyway: a name never becomes markup."""
    crit = "".join(
        f'\n  <Header value={quoteattr(c)}/>\n  <Choices name={quoteattr("criterion_" + c)} toName="prompt" '
        'choice="single">\n    <Choice value="left"/><Choice value="right"/><Choice value="tie"/>\n  </Choices>'
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
        task: dict[str, Any] = {
            "data": {"run_id": run_id, "pair_id": pair["id"], "prompt": pair["prompt"], "left": left,
                     "right": right},
            "predictions": [{"model_version": "tiebreak-priority", "score": round(prio, 6), "result": []}]}
        if pair.get("slices"):
            # task-level `meta` is stored by Label Studio but not shown by the labelling config (blind)
            task["meta"] = {"slices": list(pair["slices"])}
        out.append(task)
    return out


def _utf8(v: str) -> str:
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("is not valid Unicode text (contains a lone surrogate)") from None
    return v


Text = Annotated[str, AfterValidator(_utf8), Field(min_length=1, max_length=256)]
Ident = Annotated[Text | int, Field(union_mode="left_to_right")]


class _Loose(BaseModel):
    """The tools send more fields than tiebreak reads: extra fields are allowed and ignored."""

    model_config = ConfigDict(extra="ignore")


class LSChoices(_Loose):
    choices: list[Annotated[str, AfterValidator(_utf8), Field(max_length=64)]] = Field(default_factory=list,
                                                                                      max_length=10)


class LSResult(_Loose):
    from_name: Annotated[str, AfterValidator(_utf8), Field(max_length=200)] = ""
    value: LSChoices = Field(default_factory=LSChoices)


class LSUser(_Loose):
    id: Ident | None = None
    email: Text | None = None


class LSAnnotation(_Loose):
    result: list[LSResult] = Field(default_factory=list, max_length=100)
    completed_by: Ident | LSUser | None = None
    was_cancelled: bool = False


class LSTaskData(_Loose):
    run_id: Text
    pair_id: Text


class LSTask(_Loose):
    data: LSTaskData


class LSWebhook(_Loose):
    """``ANNOTATION_CREATED`` / ``ANNOTATION_UPDATED`` (labelstud.io/guide/webhook_reference)."""

    action: str
    annotation: LSAnnotation
    task: LSTask


class ArgillaUser(_Loose):
    id: Ident | None = None
    username: Text | None = None


class ArgillaRecordMeta(_Loose):
    run_id: Text
    pair_id: Text | None = None


class ArgillaRecord(_Loose):
    id: Ident | None = None
    external_id: Text | None = None
    metadata: ArgillaRecordMeta


class ArgillaResponse(_Loose):
    status: str = "submitted"
    values: dict[Annotated[str, AfterValidator(_utf8), Field(max_length=200)],
                 dict[str, Any] | str | None] = Field(default_factory=dict, max_length=100)
    record: ArgillaRecord
    user: ArgillaUser | None = None
    user_id: Ident | None = None


class ArgillaWebhook(_Loose):
    """``response.created`` (Standard Webhooks envelope; docs.argilla.io webhooks_internals)."""

    type: str
    data: ArgillaResponse


def _validated(model: type[BaseModel], payload: Any) -> Any:
    """``model`` of ``payload``, or a 422 in the documented error shape (locations under ``body``)."""
    try:
        return model.model_validate(payload)
    except ValidationError as e:
        raise RequestValidationError([{"loc": ("body", *err["loc"]), "msg": err["msg"], "type": err["type"]}
                                      for err in e.errors()]) from None


def _verdict(v: Any, name: str, field: str) -> str | None:
    if v is None:
        return None
    out = str(v).strip().lower()
    if out not in VERDICTS:
        raise BadInput(f"{name} = {v!r} must be one of {', '.join(VERDICTS)}", field)
    return out


def parse_ls_webhook(payload: Any) -> tuple[str, dict] | None:
    """(run_id, label) from a Label Studio annotation webhook; None for other actions / skipped tasks."""
    if not isinstance(payload, dict):
        raise BadInput("expected a JSON object (a Label Studio webhook)", "body")
    if payload.get("action") not in ("ANNOTATION_CREATED", "ANNOTATION_UPDATED"):
        return None
    hook = _validated(LSWebhook, payload)
    ann = hook.annotation
    if ann.was_cancelled:
        return None
    choices = {r.from_name: r.value.choices[0] for r in ann.result if r.value.choices}
    verdict = _verdict(choices.get("verdict"), "verdict", "annotation.result")
    if verdict is None:
        raise BadInput("annotation.result has no 'verdict' choice (use tiebreak's labeling config)",
                       "annotation.result")
    criteria = {k[len("criterion_"):]: _verdict(v, k, "annotation.result") for k, v in choices.items()
                if k.startswith("criterion_")}
    who = ann.completed_by
    if isinstance(who, LSUser):
        who = who.id if who.id is not None else who.email
    if who is None:
        raise BadInput("annotation.completed_by is missing", "annotation.completed_by")
    return hook.task.data.run_id, {"pair_id": hook.task.data.pair_id, "annotator": f"ls:{who}", "verdict": verdict,
                                   "criteria": criteria or None, "lease_id": None, "source": "label-studio"}


def argilla_records(run_id: str, batch: list[tuple[dict, float, dict | None]], judge_names: list[str],
                    suggestions: bool = False) -> list[dict]:
    out = []
    for pair, prio, votes in batch:
        left, right = _blind(pair)
        rec: dict[str, Any] = {"id": pair["id"], "fields": {"prompt": pair["prompt"], "left": left, "right": right},
                               "metadata": {"run_id": run_id, "pair_id": pair["id"], "priority": round(prio, 6)}}
        if pair.get("slices"):
            rec["metadata"]["slices"] = list(pair["slices"])
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


def argilla_settings(criteria: list[str], slices: list[str] | None = None) -> dict:
    """Dataset settings (fields + questions) matching the records above; the slices of interest as a `terms`
    metadata property (metadata is for filtering, never shown as a field)."""
    qs = [{"name": "verdict", "type": "label_selection", "labels": list(VERDICTS), "required": True}]
    qs += [{"name": f"criterion_{c}", "type": "label_selection", "labels": list(VERDICTS), "required": False}
           for c in criteria]
    out: dict[str, Any] = {"fields": [{"name": n, "type": "text"} for n in ("prompt", "left", "right")],
                           "questions": qs}
    if slices:
        out["metadata"] = [{"name": "slices", "type": "terms", "options": list(slices), "visible_for_annotators": False}]
    return out


def parse_argilla_webhook(payload: Any) -> tuple[str, dict] | None:
    if not isinstance(payload, dict):
        raise BadInput("expected a JSON object (an Argilla webhook)", "body")
    if payload.get("type") != "response.created":
        return None
    hook = _validated(ArgillaWebhook, payload)
    data = hook.data
    if data.status != "submitted":
        return None
    rec = data.record
    pair_id = rec.metadata.pair_id or rec.external_id or (str(rec.id) if rec.id is not None else None)
    if not pair_id:
        raise BadInput("data.record.metadata needs run_id and pair_id (log the records tiebreak exported)",
                       "data.record.metadata")

    def val(name: str) -> str | None:
        v = data.values.get(name)
        v = v.get("value") if isinstance(v, dict) else v
        return _verdict(v, name, f"data.values.{name}")

    verdict = val("verdict")
    if verdict is None:
        raise BadInput("the response has no 'verdict' value", "data.values.verdict")
    criteria = {k[len("criterion_"):]: v for k in data.values if k.startswith("criterion_") and (v := val(k))}
    user = data.user or ArgillaUser()
    who = user.id if user.id is not None else (user.username or data.user_id)
    if who is None or who == "":
        raise BadInput("the response names no user", "data.user")
    return rec.metadata.run_id, {"pair_id": str(pair_id), "annotator": f"argilla:{who}", "verdict": verdict,
                                 "criteria": criteria or None, "lease_id": None, "source": "argilla"}
