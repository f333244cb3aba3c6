"""/v1/experiments: checkpoints of a training run compared with the base and the best so far; the stop signal.

    POST /v1/experiments                       {name, prompts:[{id,text}], base: MODEL | {outputs:{id: text}},
                                                judges?, alpha, margin, patience?, budget_per_checkpoint?,
                                                target_margin?, budget?, webhook?} -> {experiment}
    POST /v1/experiments/{exp}/checkpoints     {checkpoint, model: MODEL | outputs:{id: text}} -> {runs:[run_id]}
    GET  /v1/experiments/{exp}/signal          {stop, reason, best_checkpoint, checkpoints:[...]}
    GET  /v1/experiments/{exp}/report          self-contained HTML report (services/experiment_report.py)
    GET  /v1/experiments/{exp}                 the experiment (config, checkpoints and their runs)

Admin token; a trainer token (POST /v1/tokens, kind 'trainer') may call the /{exp} routes of its experiment.
The runs are ordinary runs of the service (same label queue, `GET /v1/runs/{id}/next`).
Statistics: services/experiments/__init__.py; the signal rule: services/experiments/signal.py.
"""

from __future__ import annotations

import threading
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator

from tiebreak.services.api.deps import AppServices, ServicesDep, SettingsDep, admin, experiment_access
from tiebreak.services.api.models import Utf8Str
from tiebreak.services.experiments import ExperimentService, RedisKV
from tiebreak.services.outbound import check_request
from tiebreak.services.webhooks import signal_notifier

MAX_TEXT = 200_000


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PromptIn(_Strict):
    id: Utf8Str = Field(min_length=1, max_length=256)
    text: str = Field(min_length=1, max_length=MAX_TEXT)
    slices: list[str] | None = Field(None, max_length=20, description="tags of the prompt (a verdict per slice "
                                                                       "in every checkpoint's runs)")


class ExperimentCreate(_Strict):
    name: str = Field(min_length=1, max_length=200)
    prompts: list[PromptIn] = Field(min_length=1, max_length=100_000)
    base: dict[str, Any] = Field(description='MODEL spec ({"backend": "gguf"|"openai"|"vllm", ...}) or '
                                             '{"outputs": {prompt_id: text}}')
    judges: list[str | dict[str, Any]] = Field(default_factory=list, max_length=20,
                                               description="judge presets or MODEL specs; [] = labels only")
    alpha: float = Field(0.05, gt=0.0, lt=1.0, description="family-wise error of all better/worse verdicts")
    margin: float = Field(0.0, ge=0.0, lt=0.5, description="equivalence margin of every comparison")
    patience: int = Field(2, ge=1, le=1000, description="stop after this many non-improving checkpoints")
    budget_per_checkpoint: int | None = Field(None, ge=1, description="human labels per checkpoint")
    target_margin: float | None = Field(None, ge=0.0, lt=0.5,
                                        description="stop once a checkpoint is better than base by >= this")
    budget: int | None = Field(None, ge=1, description="stop once the experiment used this many human labels")
    undecided_is_plateau: bool = True
    protect_slices: list[str] | None = Field(None, max_length=50,
                                             description="slices that must not get worse than the base: a checkpoint "
                                                         "worse on one is never best, and the signal stops "
                                                         "(reason 'slice-regression')")
    method: str | None = Field(None, pattern="^(classical|ppi|active)$")
    judge_budget: Literal["all", "auto"] = Field("all", description="every checkpoint's runs: as in POST /v1/runs")
    carry_calibration: bool = Field(True, description="each checkpoint's runs start from the judge calibration "
                                                      "learnt on the earlier checkpoints' runs (calibration_from)")
    webhook: str | None = Field(None, pattern=r"^https?://", max_length=2000)


class CheckpointIn(_Strict):
    checkpoint: Utf8Str = Field(min_length=1, max_length=500)
    model: dict[str, Any] | None = None
    outputs: dict[str, str] | None = None

    @model_validator(mode="after")
    def _one(self) -> CheckpointIn:
        if (self.model is None) == (self.outputs is None):
            raise ValueError("give exactly one of model (a MODEL spec) or outputs {prompt_id: text}")
        return self


_lock = threading.Lock()


class _RunServiceBackend:
    """ExperimentService's RunBackend over the service's RunService (ordinary runs, same label queue)."""

    def __init__(self, runs: Any) -> None:
        self.rs = runs

    def create_run(self, spec: dict) -> str:
        from tiebreak.services.api.models import (
            RunCreate,  # the same validation and defaults as POST /v1/runs
        )
        spec = {k: v for k, v in spec.items() if k != "experiment" and v is not None}
        spec["name"] = spec["name"][:200]
        return self.rs.create_run(RunCreate(**spec).model_dump())

    def run_status(self, run_id: str) -> dict:
        return self.rs.status(run_id)


def experiment_service(services: AppServices) -> ExperimentService:
    """The app's ExperimentService (``services.experiments``), built on first use over its runs, store, webhook
    sender and pipeline; its signal watcher polls every ``settings.signal_interval_s``."""
    svc = services.experiments
    if svc is not None:
        return svc
    with _lock:
        svc = services.experiments
        if svc is None:
            pipeline = services.pipeline      # checkpoints generate through the runs' actors
            svc = ExperimentService(_RunServiceBackend(services.runs), kv=RedisKV(services.store.r),
                                    notifier=signal_notifier(services.webhooks),
                                    generator=pipeline.generate_outputs if pipeline is not None else None,
                                    async_generation=True)
            svc.start_watcher(services.settings.signal_interval_s)
            services.experiments = svc
    return svc


def get_experiments(services: ServicesDep) -> ExperimentService:
    return experiment_service(services)


ExperimentsDep = Annotated[ExperimentService, Depends(get_experiments)]


router = APIRouter(prefix="/v1/experiments", tags=["experiments"])


@router.post("", status_code=201, dependencies=[Depends(admin)])
def create_experiment(body: ExperimentCreate, svc: ExperimentsDep, settings: SettingsDep):
    check_request(settings, urls=[("webhook", body.webhook)],
                  specs=[("base", body.base), *((f"judges.{i}", j) for i, j in enumerate(body.judges))])
    return {"experiment": svc.create_experiment(body.model_dump(exclude_none=True))}


@router.post("/{exp}/checkpoints", status_code=201, dependencies=[Depends(experiment_access)])
def add_checkpoint(exp: str, body: CheckpointIn, svc: ExperimentsDep, settings: SettingsDep):
    check_request(settings, specs=[("model", body.model)])
    return svc.add_checkpoint(exp, body.model_dump(exclude_none=True))


@router.get("/{exp}/signal", dependencies=[Depends(experiment_access)])
def get_signal(exp: str, svc: ExperimentsDep):
    return svc.signal(exp)


@router.get("/{exp}/report", response_class=HTMLResponse, dependencies=[Depends(experiment_access)])
def get_report(exp: str, svc: ExperimentsDep, links: Literal["api", "files"] = Query(
        "api", description="run-report links: 'api' = ../../runs/{id}/report (this service), 'files' = "
                           "tiebreak-report-{id}.html next to the page (`tiebreak report --experiment` writes them)")):
    """The experiment as one self-contained HTML page: every checkpoint vs the base and the best so far."""
    from tiebreak.services.experiment_report import (
        api_run_href,
        experiment_report_data,
        file_run_href,
        render_experiment_report,
    )
    data = experiment_report_data(svc, exp, run_href=api_run_href if links == "api" else file_run_href)
    return HTMLResponse(render_experiment_report(data))


@router.get("/{exp}", dependencies=[Depends(experiment_access)])
def get_experiment(exp: str, svc: ExperimentsDep):
    rec = svc.get(exp)
    rec.pop("outputs", None)
    rec["signal"] = svc.signal(exp)
    return rec
