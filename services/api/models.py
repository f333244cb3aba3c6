"""The API contract (DESIGN.md "Service API"): request and response models. Field names are fixed."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from tiebreak.sampler.decision import Decision

Verdict = Literal["left", "right", "tie"]
DecisionName = Decision         # sampler/decision.py: running | better | worse | equivalent | undecided

MAX_TEXT = 200_000
MAX_SLICES = 50          # = sampler.slices.MAX_SLICES: slices of interest one run follows (each costs alpha)
MAX_SLICES_PER_PAIR = 20
SLICE_HELP = ('tags of the pair\'s prompt, e.g. ["edge-case", "billing"] (a pair may be in several or none); '
              "the run gives a verdict per slice. Never shown to annotators")


def _check_slice_names(v: list[str] | None) -> list[str] | None:
    if v is None:
        return v
    for name in v:
        if not name.strip() or len(name) > 100:
            raise ValueError(f"slice names must be non-empty and at most 100 characters (got {name!r})")
        _utf8(name)
    return list(dict.fromkeys(v))


CRITERION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_. -]{0,63}$"


def _utf8(v: str) -> str:
    """Refuse strings that cannot be stored (a lone surrogate such as "\\ud800" parses from JSON but has no
    UTF-8 encoding): they would fail the Redis write they are part of."""
    try:
        v.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"contains {v[e.start:e.end]!r}, which is not valid Unicode text (a lone surrogate)") \
            from None
    return v


Utf8Str = Annotated[str, AfterValidator(_utf8)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PairIn(Strict):
    id: Utf8Str = Field(min_length=1, max_length=256, description="your id of the pair, unique within the run")
    prompt: str = Field(max_length=MAX_TEXT)
    base: str = Field(max_length=MAX_TEXT, description="the base model's response")
    tuned: str = Field(max_length=MAX_TEXT, description="the fine-tuned model's response")
    judge_votes: dict[str, float | None] | None = Field(
        None, description="{judge: P(tuned better) in [0, 1]} — use these instead of running judges")
    slices: list[str] | None = Field(None, max_length=MAX_SLICES_PER_PAIR, description=SLICE_HELP)

    _slices = field_validator("slices")(_check_slice_names)

    @field_validator("judge_votes")
    @classmethod
    def _probs(cls, v: dict[str, float | None] | None) -> dict[str, float | None] | None:
        if v is None:
            return v
        for k, p in v.items():
            if not k:
                raise ValueError("judge names must be non-empty")
            if p is not None and (math.isnan(p) or not 0.0 <= p <= 1.0):
                raise ValueError(f"judge_votes[{k!r}] = {p} must be a probability in [0, 1] (or null if missing)")
        return v


class PromptIn(Strict):
    id: str = Field(min_length=1, max_length=256)
    text: str = Field(min_length=1, max_length=MAX_TEXT)
    slices: list[str] | None = Field(None, max_length=MAX_SLICES_PER_PAIR, description=SLICE_HELP)

    _slices = field_validator("slices")(_check_slice_names)


class GenerateIn(Strict):
    base: dict[str, Any] = Field(description='MODEL spec, e.g. {"backend": "gguf", "preset": "gemma-3-270m-base"}')
    tuned: dict[str, Any] = Field(description="MODEL spec of the fine-tuned model")
    prompts: list[PromptIn] = Field(min_length=1, max_length=100_000)
    max_tokens: int = Field(256, ge=1, le=8192)
    temperature: float = Field(0.0, ge=0.0, le=2.0)

    @field_validator("base", "tuned")
    @classmethod
    def _prompt_format(cls, v: dict[str, Any]) -> dict[str, Any]:
        from tiebreak.judges.backends import prompt_format_problem

        why = prompt_format_problem(v)
        if why:
            raise ValueError(why)
        return v

    @model_validator(mode="after")
    def _unique(self) -> GenerateIn:
        ids = [p.id for p in self.prompts]
        if len(set(ids)) != len(ids):
            raise ValueError("prompts[].id must be unique")
        return self


JudgeSpec = str | dict[str, Any]


class RunCreate(Strict):
    name: str = Field(min_length=1, max_length=200)
    pairs: list[PairIn] | None = Field(None, max_length=1_000_000)
    generate: GenerateIn | None = None
    judges: list[JudgeSpec] | None = Field(
        None, description='judge presets ("qwen2.5-coder-0.5b", "gemma-3-270m-base", "NAME:pointwise") or MODEL '
                          "specs; [] = labels only (classical sequential test)")
    criteria: list[Annotated[str, Field(pattern=CRITERION_PATTERN)]] | None = Field(
        None, max_length=10, description="extra per-criterion verdicts (alpha split by Bonferroni); names of 1-64 "
                                         "letters, digits, '_', '-', '.' or spaces, starting with a letter or digit")
    alpha: float = Field(0.05, gt=0.0, lt=1.0)
    margin: float = Field(0.0, ge=0.0, lt=0.5)
    budget: int | None = Field(None, ge=1, description="maximum number of labelled pairs")
    method: Literal["classical", "ppi", "active"] | None = None
    labels_per_pair: int = Field(1, ge=1, le=20, description="annotators per pair (their verdicts are averaged)")
    judge_budget: Literal["all", "auto"] = Field(
        "all", description='"all": every judge votes on every pair; "auto": judge in a random order (labelled pairs '
                           "first) and stop a judge once its value interval shows it saves < 5 % of "
                           "the labels (docs/concepts.md)")
    lease_ttl_s: float | None = Field(None, gt=0, le=7 * 86400, description="seconds an annotator holds a pair")
    webhook_url: str | None = Field(None, pattern=r"^https?://", max_length=2000)
    seed: int | None = Field(None, ge=0, lt=2**32)
    slices_of_interest: list[str] | None = Field(
        None, description=f"slices that get their own verdict (default: every slice the pairs carry; at most "
                          f"{MAX_SLICES}); alpha is split over the overall verdict and these slices")
    calibration_from: list[Annotated[str, Field(min_length=1, max_length=64)]] | None = Field(
        None, max_length=100,
        description="ids of earlier runs with the same judges and criteria: the new run starts from the judge "
                    "calibration fitted on their labelled pairs (fixed when this run is created, so validity "
                    "holds); 422 when a run is unknown, has other judges or criteria, or no labels yet")

    @model_validator(mode="after")
    def _one_source(self) -> RunCreate:
        if (self.pairs is None) == (self.generate is None):
            raise ValueError("give exactly one of 'pairs' (ready responses) or 'generate' (models + prompts)")
        if self.pairs is not None and not self.pairs:
            raise ValueError("'pairs' is empty: give at least one pair")
        if self.criteria is not None:
            if len(set(self.criteria)) != len(self.criteria) or any(not c for c in self.criteria):
                raise ValueError("'criteria' must be distinct non-empty names")
        if self.judges:
            from tiebreak.services.pipeline import validate_judge_spec

            for i, j in enumerate(self.judges):
                err = validate_judge_spec(j)
                if err:
                    raise ValueError(f"judges[{i}]: {err}")
        return self


class PairsAdd(Strict):
    pairs: list[PairIn] = Field(min_length=1, max_length=1_000_000)


class RunCreated(BaseModel):
    run_id: str
    slice_warnings: list[str] = Field(default_factory=list, description="as in the run's status (runs with slices)")


class PairsAdded(BaseModel):
    run_id: str
    added: int
    n_pairs: int


class SliceStatus(BaseModel):
    n_pairs: int
    labels: int = Field(description="labels of this slice's pairs that entered its confidence sequence")
    estimate: float
    interval: list[float]
    alpha: float
    decision: DecisionName


class CriterionStatus(BaseModel):
    labels: int
    estimate: float | None
    interval: list[float]
    alpha: float
    decision: DecisionName
    method: str
    pending: int
    pool_version: int
    slices: dict[str, SliceStatus] = Field(default_factory=dict)


class JudgeValueStatus(BaseModel):
    value: float = Field(description="share of label variance its calibrated votes explain (cross-fitted R^2) = "
                                     "share of labels saved against the labels-only test")
    interval: list[float] = Field(description="interval for the value (level below; Fisher z)")
    level: float
    labels: int = Field(description="labelled pairs (processed by the sampler) with this judge's vote")
    labels_saved: float | None = Field(description="labels this run saved so far: labels x value / (1 - value) "
                                                   "(null: unbounded, a judge that explains every label)")
    labels_saved_interval: list[float | None]
    cpu_s: float | None = Field(None, description="CPU-seconds spent voting in this run (not for the jury)")
    pairs_voted: int | None = None
    pairs_allowed: int | None = Field(None, description="auto budget, until the judge has shown value: the pairs it "
                                                        "may have voted (the labelled ones and a lead)")
    state: str | None = Field(None, description="running | waiting-for-labels | stopped-worthless | "
                                                "stopped-decided | finished | supplied")
    stopped_by: str | None = Field(None, description="stopped-worthless: 'trial' (its votes did not agree with the "
                                                     "labels at a checkpoint) or 'value' (its value interval's "
                                                     "upper end fell below 5 %)")
    stopped_at_labels: int | None = None
    stopped_at_interval: list[float] | None = Field(None, description="the value interval the stop was decided on")
    eta_s: float | None = Field(None, description="while running: seconds to vote the pairs it has not voted, at its "
                                                  "pace so far (a stop or the verdict may end it sooner)")


class CarriedCalibration(BaseModel):
    labels: int = Field(description="labelled pairs (with judge votes) of the named runs the prior is fitted on")
    labels_by_run: dict[str, int]
    predicted_variance_ratio: float = Field(description="label variance over residual variance that the prior "
                                                        "predicts (1: the judges are not expected to help)")
    prior_penalty: float = Field(20.0, description="how firmly the run holds to the prior: the ridge penalty on its "
                                                   "deviation from it (estimated from how much the calibration "
                                                   "differed between >= 5 named runs, else 20)")


class CalibrationPrior(BaseModel):
    from_: list[str] = Field(alias="from", description="the runs named in calibration_from")
    labels: int = Field(description="labelled pairs the overall comparison's prior is based on")
    comparisons: dict[str, CarriedCalibration] = Field(description="per comparison (overall, criteria)")
    not_carried: dict[str, str] = Field(default_factory=dict,
                                        description="criteria that start without a prior, and why")


class RunStatus(BaseModel):
    run_id: str
    name: str
    status: Literal["generating", "judging", "ready", "failed"]
    n_pairs: int
    votes: int = Field(description="pairs with judge votes")
    generated: int = Field(0, description="pairs whose two outputs exist (all of them for a run over given pairs)")
    judged: int = Field(0, description="pairs whose judge votes have arrived (0 without judges); a streaming run "
                                       "hands out pairs while this still grows")
    labels: int = Field(description="pairs whose human label entered the sampler")
    annotations: int = Field(description="individual annotator verdicts received")
    estimate: float | None
    interval: list[float]
    alpha: float
    margin: float
    budget: int | None
    decision: DecisionName
    method: str | None
    judges: list[str]
    labels_per_pair: int
    pending: int
    criteria: dict[str, CriterionStatus]
    progress: dict[str, Any]
    error: str | None
    created_at: float
    alpha_split: str | None = None
    multiplicity: str | None = Field(None, description="how alpha is shared over the run's questions: 'holm' "
                                                       "(one draw sequence) or null (a run stored before it: "
                                                       "bonferroni, as alpha_split says)")
    pool_version: int | None = None
    slices: dict[str, SliceStatus] = Field(default_factory=dict, description="per-slice verdicts (overall)")
    slice_warnings: list[str] = Field(default_factory=list,
                                      description="slices that only labelling every pair (or more than the "
                                                  "budget) can decide, said when the run is created")
    finished: bool = Field(False, description="the overall verdict and every slice verdict are final: "
                                              "nothing more will be handed out")
    judge_budget: str = Field("all", description='"all" or "auto" (as created)')
    judges_value: dict[str, JudgeValueStatus] = Field(
        default_factory=dict, description="per judge (and \"jury\" for several): what its calibrated votes are "
                                          "worth on the labels so far, and what it cost (docs/api.md)")
    calibration_prior: CalibrationPrior | None = Field(
        None, description="the judge calibration this run started from (calibration_from), or null")


class RunSummary(BaseModel):
    run_id: str
    name: str
    status: str
    created_at: float


class Progress(BaseModel):
    labelled_by_you: int
    labels: int
    budget: int | None


class NextPair(BaseModel):
    """A blind pair: no model names, no judge votes; left/right randomised per pair."""

    pair_id: str
    lease_id: str
    lease_expires_at: datetime
    prompt: str
    left: str
    right: str
    criteria: list[str]
    progress: Progress


class LabelIn(Strict):
    lease_id: Utf8Str | None = Field(None, max_length=100)
    pair_id: Utf8Str = Field(min_length=1, max_length=256)
    annotator: Utf8Str | None = Field(None, min_length=1, max_length=200,
                                  description="required with the admin token; defaults to the token's annotator")
    verdict: Verdict
    criteria: dict[str, Verdict] | None = None


class LabelOut(BaseModel):
    accepted: bool
    duplicate: bool = Field(description="true when this annotator had already labelled the pair (counted once)")
    pair_id: str
    labels: int
    decision: DecisionName | None = Field(
        description="the run's decision; null for annotator tokens (blind study) unless the server runs with "
                    "TIEBREAK_ANNOTATORS_SEE_DECISION=1")


ExpiresIn = Field(None, gt=0, le=366 * 86400, description="the token expires this many seconds from now "
                                                        "(default: valid until revoked)")


class AnnotatorCreate(Strict):
    name: Utf8Str = Field(min_length=1, max_length=200, pattern=r"^[^|\s][^|]*$")
    runs: list[str] = Field(min_length=1, max_length=1000, description="run ids this annotator may label")
    expires_in_s: float | None = ExpiresIn


class AnnotatorOut(BaseModel):
    name: str
    token: str
    runs: list[str]
    token_id: str
    expires_at: float | None = None


class TokenCreate(Strict):
    kind: Literal["integration", "trainer", "metrics", "annotator"]
    name: Utf8Str = Field(min_length=1, max_length=200, pattern=r"^[^|\s][^|]*$", description="who uses it")
    runs: list[str] = Field(default_factory=list, max_length=1000,
                            description="integration / annotator: the run ids it may label")
    experiment: str | None = Field(None, min_length=1, max_length=200, description="trainer: its experiment")
    expires_in_s: float | None = ExpiresIn


class TokenInfo(BaseModel):
    id: str
    kind: str
    name: str | None
    runs: list[str]
    experiment: str | None
    created_at: float | None
    expires_at: float | None


class TokenOut(TokenInfo):
    token_id: str
    token: str


class Health(BaseModel):
    status: Literal["ok"]
    redis: bool


class ErrorItem(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ErrorOut(BaseModel):
    """Every 4xx/5xx body (services/errors.py; docs/api.md, "Errors")."""
    detail: list[ErrorItem]
