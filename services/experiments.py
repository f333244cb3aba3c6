"""Experiments: every checkpoint of a training run compared with the base and with the best checkpoint so far,
and a stop-training signal computed from those verdicts.

An experiment fixes a prompt set, a base (a model spec or pre-generated outputs per prompt id), judge presets
(``[]`` = labels only), alpha, margin and the signal rule. Each checkpoint (model spec or outputs) makes up to
two ordinary runs of the service (same label queue as any run):

    vs_base   pairs (base output, checkpoint output) on every prompt
    vs_best   pairs (best checkpoint's output, checkpoint output); absent while the best is still the base
              (then vs_base *is* the comparison with the best)

**alpha-spending.** The k-th checkpoint of an experiment (k = 1, 2, ...) spends
``alpha_k = alpha * 6 / (pi^2 k^2)`` (``sampler.decision.spend_alpha``; sum over k is exactly alpha) and splits it
equally between its n_k in {1, 2} comparisons: each run's confidence sequence has level alpha_k / n_k.
Each run's sequence is anytime-valid conditionally on everything that happened before it was created (which
checkpoint is "best" is decided by earlier data, but the run's own draws are fresh), so by the union bound

    P(any better/worse verdict of the experiment is wrong) <= sum_k n_k * alpha_k / n_k = sum_k alpha_k <= alpha

however many checkpoints arrive and whenever each run stops. The sequence 6/(pi^2 k^2) front-loads: the first
checkpoint gets 0.61 alpha, the 2nd 0.15 alpha, the 10th 0.006 alpha.

**Signal rule** (``SignalRule``, a pure function of the checkpoint verdicts):

* best checkpoint = the latest checkpoint whose comparison with the best-so-far (the base when no checkpoint
  has been shown better yet) ended "better"; ``None`` while no checkpoint has beaten the base.
* ``target``: stop when some checkpoint's lower confidence bound vs the base exceeds 1/2 + target_margin
  ("better than base by >= target_margin"; only if target_margin is set). The bound is anytime-valid, so this
  may fire before the run has formally decided.
* ``regression`` / ``plateau``: stop when the last ``patience`` finished checkpoints submitted after the best
  were each not better than the best: "equivalent" or "worse" (and "undecided", i.e. not shown better within
  the label budget, unless ``undecided_is_plateau=False``). ``regression`` if all of them were "worse",
  ``plateau`` otherwise. Checkpoints still running are skipped (they neither count nor break the streak).
* ``slice-regression``: with ``protect_slices`` (slices that must not get worse), a checkpoint whose comparison
  with the base ended "worse" on a protected slice is never the best checkpoint, and the signal stops when the
  latest checkpoint with a final verdict on a protected slice is worse than the base there. The slice verdicts
  are the runs' own (anytime-valid, inside the checkpoint's alpha), so this adds no error of its own.
* ``budget``: stop when the experiment's human labels reach ``budget``.
Priority when several hold: target, slice-regression, regression, plateau, budget. The signal is recomputed on every read and
every ``interval`` seconds by ``start_watcher`` (the service runs it); a webhook (``webhook`` URL in the
experiment) receives the signal JSON whenever (stop, reason, best_checkpoint) changes.
"""

from __future__ import annotations

import builtins
import json
import math
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np

from judges.spec import SpecError, check_judge, check_model
from sampler.decision import spend_alpha

FINAL = ("better", "worse", "equivalent", "undecided")
REASONS = ("target", "regression", "plateau", "budget")


class ExperimentError(ValueError):
    """Bad input; ``field`` names the offending field (the API answers 4xx with it)."""

    def __init__(self, field: str, message: str, status: int = 422):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        self.status = status


class NotFound(ExperimentError):
    def __init__(self, field: str, message: str):
        super().__init__(field, message, status=404)


# ------------------------------------------------------------------------------------------- signal rule
@dataclass(frozen=True)
class ComparisonView:
    """What the signal needs from one run (a GET /v1/runs/{id} subset)."""
    run_id: str
    decision: str = "running"
    estimate: float = 0.5
    lower: float = 0.0
    upper: float = 1.0
    labels: int = 0
    alpha: float = 0.05
    against: str = "base"          # the reference side: "base" or a checkpoint name
    slices: dict | None = None     # per-slice verdicts of the run (prompts with slices), as in its status

    def to_dict(self) -> dict:
        d = {"run_id": self.run_id, "decision": self.decision, "estimate": self.estimate, "lower": self.lower,
             "upper": self.upper, "labels": self.labels, "alpha": self.alpha, "against": self.against}
        if self.slices:
            d["slices"] = self.slices
        return d

    @classmethod
    def from_status(cls, run_id: str, st: dict, against: str) -> ComparisonView:
        iv = st.get("interval") or [0.0, 1.0]
        est = st.get("estimate")
        return cls(run_id, str(st.get("decision") or "running"), 0.5 if est is None else float(est),
                   float(iv[0]), float(iv[1]), int(st.get("labels", 0)), float(st.get("alpha", 0.05)), against,
                   st.get("slices") or None)


@dataclass(frozen=True)
class CheckpointVerdict:
    checkpoint: str
    index: int                           # k, from 1
    alpha: float                         # alpha_k spent on this checkpoint
    vs_base: ComparisonView
    vs_best: ComparisonView | None = None  # None: the best was the base when it arrived

    @property
    def reference(self) -> ComparisonView:
        return self.vs_best if self.vs_best is not None else self.vs_base

    @property
    def decision(self) -> str:
        """Its verdict against the best-so-far: running / better / worse / equivalent / undecided."""
        return self.reference.decision

    def to_dict(self) -> dict:
        return {"checkpoint": self.checkpoint, "index": self.index, "alpha": self.alpha,
                "vs_base": self.vs_base.to_dict(), "vs_best": self.reference.to_dict(),
                "compared_to": self.reference.against, "decision": self.decision,
                "labels": self.vs_base.labels + (self.vs_best.labels if self.vs_best else 0)}


@dataclass(frozen=True)
class Signal:
    stop: bool
    reason: str | None
    best_checkpoint: str | None
    checkpoints: list[dict] = field(default_factory=list)
    message: str = ""
    labels: int = 0

    def to_dict(self) -> dict:
        return {"stop": self.stop, "reason": self.reason, "best_checkpoint": self.best_checkpoint,
                "checkpoints": self.checkpoints, "message": self.message, "labels": self.labels}

    def key(self) -> tuple:
        return (self.stop, self.reason, self.best_checkpoint)


@dataclass(frozen=True)
class SignalRule:
    patience: int = 2
    target_margin: float | None = None
    budget: int | None = None
    undecided_is_plateau: bool = True
    protect_slices: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "protect_slices", tuple(self.protect_slices))
        if not isinstance(self.patience, int) or self.patience < 1:
            raise ExperimentError("patience", f"must be an integer >= 1 (got {self.patience!r})")
        if self.target_margin is not None and not 0 <= self.target_margin < 0.5:
            raise ExperimentError("target_margin", f"must lie in [0, 0.5) (got {self.target_margin!r})")
        if self.budget is not None and self.budget < 1:
            raise ExperimentError("budget", f"must be a positive number of labels (got {self.budget!r})")

    def evaluate(self, checkpoints: Sequence[CheckpointVerdict], labels: int | None = None) -> Signal:
        cks = sorted(checkpoints, key=lambda c: c.index)
        rows = [c.to_dict() for c in cks]
        if labels is None:
            labels = sum(r["labels"] for r in rows)
        best_i = -1
        for i, c in enumerate(cks):
            if c.decision == "better" and not self._worse_on_protected(c):
                best_i = i
        best = cks[best_i].checkpoint if best_i >= 0 else None
        best_name = best or "the base"

        def out(stop: bool, reason: str | None, msg: str) -> Signal:
            return Signal(stop, reason, best, rows, msg, labels)

        if self.target_margin is not None:
            for c in cks:
                if c.vs_base.lower > 0.5 + self.target_margin:
                    return out(True, "target", f"{c.checkpoint} is better than the base by >= {self.target_margin:g} "
                                               f"(lower bound {c.vs_base.lower:.3f} > {0.5 + self.target_margin:.3f})")
        guarded = [c for c in cks if self._protected_verdicts(c)]
        if guarded and self._worse_on_protected(guarded[-1]):
            c = guarded[-1]
            return out(True, "slice-regression", f"{c.checkpoint} is worse than the base on protected slice(s) "
                                                 f"{', '.join(self._worse_on_protected(c))}")
        plateau_set = {"equivalent", "worse"} | ({"undecided"} if self.undecided_is_plateau else set())
        after = [c for c in cks[best_i + 1:] if c.decision in FINAL]
        last = after[-self.patience:]
        if len(last) == self.patience and all(c.decision in plateau_set for c in last):
            names = ", ".join(f"{c.checkpoint}: {c.decision}" for c in last)
            if all(c.decision == "worse" for c in last):
                return out(True, "regression", f"the last {self.patience} checkpoint(s) are worse than {best_name} ({names})")
            return out(True, "plateau", f"the last {self.patience} checkpoint(s) are not better than {best_name} ({names})")
        if self.budget is not None and labels >= self.budget:
            return out(True, "budget", f"{labels} human labels used (budget {self.budget})")
        running = sum(1 for c in cks if c.decision not in FINAL)
        return out(False, None, f"{len(cks)} checkpoint(s), {running} running; best: {best_name}")

    def _protected_verdicts(self, c: CheckpointVerdict) -> dict[str, str]:
        """The final verdicts vs the base of c's protected slices (running ones left out)."""
        sl = c.vs_base.slices or {}
        return {s: sl[s]["decision"] for s in self.protect_slices
                if s in sl and sl[s].get("decision") in FINAL}

    def _worse_on_protected(self, c: CheckpointVerdict) -> list[str]:
        return [s for s, d in self._protected_verdicts(c).items() if d == "worse"]


# ---------------------------------------------------------------------------------------- collaborators
class RunBackend(Protocol):
    """The service's runs (POST /v1/runs, GET /v1/runs/{id} shapes)."""

    def create_run(self, spec: dict) -> str: ...

    def run_status(self, run_id: str) -> dict: ...


class KV(Protocol):
    def get_json(self, key: str) -> Any | None: ...

    def put_json(self, key: str, value: Any) -> None: ...

    def keys(self, prefix: str) -> list[str]: ...

    def lock(self, key: str) -> Any: ...


class MemoryKV:
    def __init__(self) -> None:
        self._d: dict[str, Any] = {}
        self._lock = threading.Lock()

    def get_json(self, key: str) -> Any | None:
        with self._lock:
            v = self._d.get(key)
        return None if v is None else json.loads(v)

    def put_json(self, key: str, value: Any) -> None:
        v = json.dumps(value)   # the same round trip as Redis: JSON-able values only
        with self._lock:
            self._d[key] = v

    def keys(self, prefix: str) -> list[str]:
        with self._lock:
            return [k for k in self._d if k.startswith(prefix)]

    def lock(self, key: str) -> Any:
        import contextlib

        return contextlib.nullcontext()      # one process: ExperimentService's own lock is enough


class LockLost(RuntimeError):
    """A write under ``RedisKV.lock`` found the lock held by someone else (it expired): nothing was written."""


class RedisKV:
    """JSON values in any redis-py client (the service's store passes its client).

    Several API replicas share it: every read-modify-write of an experiment runs under ``lock(key)``, a lock
    in Redis (``{key}:lock``, SET NX PX with a random token, ``LOCK_TTL_S``), and a ``put_json`` made while
    holding it is one Lua script that writes only if the lock still holds our token (a fencing check: a holder
    paused past the TTL cannot overwrite a newer record; it gets LockLost)."""

    LOCK_TTL_S = 120.0
    _PUT_IF = "if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('SET', KEYS[2], ARGV[2]) return 1 end return 0"
    _UNLOCK = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"

    def __init__(self, client: Any, prefix: str = "tb:") -> None:
        self.r = client
        self.prefix = prefix
        self._held = threading.local()

    def get_json(self, key: str) -> Any | None:
        import json
        v = self.r.get(self.prefix + key)
        return None if v is None else json.loads(v)

    def put_json(self, key: str, value: Any) -> None:
        import json
        token = getattr(self._held, "tokens", {}).get(key)
        if token is None:
            self.r.set(self.prefix + key, json.dumps(value))
        elif not self.r.eval(self._PUT_IF, 2, self.prefix + key + ":lock", self.prefix + key, token,
                             json.dumps(value)):
            raise LockLost(f"the lock on {key} expired while this replica held it; nothing was written")

    def lock(self, key: str) -> Any:
        import contextlib
        import secrets

        @contextlib.contextmanager
        def held() -> Any:
            tokens = getattr(self._held, "tokens", None)
            if tokens is None:
                tokens = self._held.tokens = {}
            if key in tokens:            # re-entrant within a thread
                yield
                return
            token = secrets.token_hex(16)
            name = self.prefix + key + ":lock"
            deadline = time.monotonic() + self.LOCK_TTL_S + 10
            while not self.r.set(name, token, nx=True, px=int(self.LOCK_TTL_S * 1000)):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"could not lock {key}")
                time.sleep(0.02)
            tokens[key] = token
            try:
                yield
            finally:
                tokens.pop(key, None)
                self.r.eval(self._UNLOCK, 1, name, token)
        return held()

    def keys(self, prefix: str) -> list[str]:
        n = len(self.prefix)
        return [k[n:] for k in (x.decode() if isinstance(x, bytes) else x
                                for x in self.r.scan_iter(self.prefix + prefix + "*")) if not k.endswith(":lock")]


Generator = Callable[[dict, list[dict]], dict[str, str]]   # (model spec, prompts [{id, text}]) -> {id: text}
Notifier = Callable[[str, dict], None]                      # (webhook url, signal json)


def backend_generator(spec: dict, prompts: list[dict]) -> dict[str, str]:
    """Generate outputs with a judges.backends model spec (gguf / openai / vllm)."""
    from judges.backends import make_backend
    be = make_backend(spec)
    try:
        texts = be.generate([p["text"] for p in prompts], max_tokens=int(spec.get("max_tokens", 256)),
                            temperature=float(spec.get("temperature", 0.0)))
    finally:
        close = getattr(be, "close", None)
        if close and spec.get("backend") != "gguf":   # GGUF backends are shared per process (judges.backends)
            close()
    return {p["id"]: t for p, t in zip(prompts, texts, strict=True)}


def post_webhook(url: str, payload: dict) -> None:
    """Fire-and-forget POST (a thread; failures are logged, never raised into the request)."""
    def send() -> None:
        import logging

        import httpx
        try:
            httpx.post(url, json=payload, timeout=10.0)
        except Exception as e:  # noqa: BLE001 - a dead webhook must not break the service
            logging.getLogger("tiebreak.experiments").warning("webhook %s failed: %s", url, e)
    threading.Thread(target=send, daemon=True).start()


# ----------------------------------------------------------------------------------------------- service
def _check_model(field_name: str, spec: Any) -> dict:
    try:
        return check_model(field_name, spec)
    except SpecError as e:
        raise ExperimentError(e.field, e.message) from None


def _check_judge(field_name: str, j: Any) -> None:
    """A judge as for POST /v1/runs: PRESET[:MODE], a .gguf path, feature:NAME or a MODEL spec."""
    try:
        check_judge(field_name, j)
    except SpecError as e:
        raise ExperimentError(e.field, e.message) from None


class ExperimentService:
    """Experiments over a RunBackend, persisted in a KV store. Thread-safe for one process."""

    def __init__(self, runs: RunBackend, kv: KV | None = None, generator: Generator | None = None,
                 notifier: Notifier | None = None, async_generation: bool = False,
                 validate_judges: bool = True) -> None:
        self.runs = runs
        self.validate_judges = validate_judges     # False: judge names are labels of supplied votes (replay)
        self.async_generation = async_generation   # model-spec checkpoints: generate in a thread
        self.kv = kv if kv is not None else MemoryKV()
        self.generator = generator or backend_generator
        self.notifier = notifier or post_webhook
        self._lock = threading.RLock()

    def _guard(self, exp_id: str) -> Any:
        """Serialise read-modify-writes of one experiment: in this process and across replicas (KV lock)."""
        import contextlib

        stack = contextlib.ExitStack()
        stack.enter_context(self._lock)
        stack.enter_context(self.kv.lock(f"exp:{exp_id}"))
        return stack

    # -------------------------------------------------------------------------------------- experiments
    def create_experiment(self, body: dict) -> str:
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
        base = _check_model("base", body["base"])
        judges = body.get("judges", [])
        if judges is None:
            judges = []
        if not isinstance(judges, list) or not all((isinstance(j, str) and j) or isinstance(j, dict) for j in judges):
            raise ExperimentError("judges", "must be a list of judge presets or MODEL specs ([] = labels only)")
        for i, j in enumerate(judges if self.validate_judges else []):
            _check_judge(f"judges[{i}]", j)
        alpha = body.get("alpha", 0.05)
        if not isinstance(alpha, int | float) or not 0 < alpha < 1:
            raise ExperimentError("alpha", f"must lie in (0, 1) (got {alpha!r})")
        margin = body.get("margin", 0.0)
        if not isinstance(margin, int | float) or not 0 <= margin < 0.5:
            raise ExperimentError("margin", f"must lie in [0, 0.5) (got {margin!r})")
        bpc = body.get("budget_per_checkpoint")
        if bpc is not None and (not isinstance(bpc, int) or bpc < 1):
            raise ExperimentError("budget_per_checkpoint", f"must be a positive integer (got {bpc!r})")
        webhook = body.get("webhook")
        if webhook is not None and (not isinstance(webhook, str) or not webhook.startswith(("http://", "https://"))):
            raise ExperimentError("webhook", "must be an http(s) URL")
        rule = SignalRule(patience=body.get("patience", 2) if body.get("patience") is not None else 2,
                          target_margin=body.get("target_margin"), budget=body.get("budget"),
                          undecided_is_plateau=bool(body.get("undecided_is_plateau", True)),
                          protect_slices=self._check_protect_slices(body.get("protect_slices"), clean))
        base_outputs = None
        if "outputs" in base:
            base_outputs = self._check_outputs("base.outputs", base["outputs"], clean)
        exp_id = "exp_" + uuid.uuid4().hex[:12]
        rec = {"experiment": exp_id, "name": name.strip(), "prompts": clean, "judges": judges,
               "alpha": float(alpha), "margin": float(margin), "budget_per_checkpoint": bpc,
               "rule": asdict(rule), "webhook": webhook, "method": body.get("method"),
               "base": None if base_outputs is not None else base,
               "outputs": {"base": base_outputs} if base_outputs is not None else {},
               "checkpoints": [], "last_signal": None, "created_at": time.time()}
        with self._lock:
            self.kv.put_json(f"exp:{exp_id}", rec)
        return exp_id

    def get(self, exp_id: str) -> dict:
        rec = self.kv.get_json(f"exp:{exp_id}")
        if rec is None:
            raise NotFound("experiment", f"no experiment {exp_id!r}")
        return rec

    # The API's name for "every experiment id". Below it, inside this class, ``list`` is this method, so the
    # annotations that follow spell the type ``builtins.list``.
    def list(self) -> list[str]:
        return sorted(k.split(":", 1)[1] for k in self.kv.keys("exp:"))

    @staticmethod
    def _check_protect_slices(names: Any, prompts: builtins.list[dict]) -> tuple[str, ...]:
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

    @staticmethod
    def _check_outputs(field_name: str, outputs: Any, prompts: builtins.list[dict]) -> dict[str, str]:
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

    def _outputs(self, rec: dict, side: str) -> dict[str, str]:
        """Outputs of the base or a checkpoint, generated once and kept in the record."""
        if side not in rec["outputs"]:
            spec = rec["base"] if side == "base" else next(c["model"] for c in rec["checkpoints"] if c["checkpoint"] == side)
            try:
                out = self.generator(spec, rec["prompts"])
            except Exception as e:  # noqa: BLE001 - a bad spec or a dead backend: a 4xx naming the model
                raise ExperimentError("base" if side == "base" else "model",
                                      f"could not generate the outputs of {side} with {spec}: {e}") from e
            rec["outputs"][side] = self._check_outputs("base" if side == "base" else "model", out, rec["prompts"])
        return rec["outputs"][side]

    # -------------------------------------------------------------------------------------- checkpoints
    def add_checkpoint(self, exp_id: str, body: dict) -> dict:
        if not isinstance(body, dict):
            raise ExperimentError("body", "must be a JSON object")
        name = body.get("checkpoint")
        if not isinstance(name, str) or not name.strip() or name.strip() == "base":
            raise ExperimentError("checkpoint", "required, a non-empty name other than 'base'")
        name = name.strip()
        if ("model" in body) == ("outputs" in body):
            raise ExperimentError("model", "give exactly one of model (a model spec) or outputs {prompt_id: text}")
        with self._guard(exp_id):
            rec = self.get(exp_id)
            if any(c["checkpoint"] == name for c in rec["checkpoints"]):
                raise ExperimentError("checkpoint", f"{name!r} was already submitted to {exp_id}", status=409)
            model = None
            if "outputs" in body:
                rec["outputs"][name] = self._check_outputs("outputs", body["outputs"], rec["prompts"])
            else:
                model = _check_model("model", body["model"])
                if "outputs" in model:
                    rec["outputs"][name] = self._check_outputs("model.outputs", model["outputs"], rec["prompts"])
                    model = None
            k = len(rec["checkpoints"]) + 1
            alpha_k = spend_alpha(rec["alpha"], k)
            ck: dict[str, Any] = {"checkpoint": name, "index": k, "alpha": alpha_k, "model": model, "runs": {},
                  "submitted_at": time.time(), "status": "ready"}
            missing = [s for s in ("base", name) if s not in rec["outputs"]]
            if missing and self.async_generation:
                # generating takes minutes: answer now, create the runs when the outputs exist
                ck["status"] = "generating"
                rec["checkpoints"].append(ck)
                self.kv.put_json(f"exp:{exp_id}", rec)
                threading.Thread(target=self._generate_then_compare, args=(exp_id, name),
                                 name=f"tiebreak-generate-{name}", daemon=True).start()
                return {"experiment": exp_id, "checkpoint": name, "index": k, "alpha": alpha_k, "runs": [],
                        "vs_base": None, "vs_best": None, "status": "generating"}
            rec["checkpoints"].append(ck)
            try:
                for side in missing:
                    self._outputs(rec, side)
                self._create_runs(exp_id, rec, ck)
            except Exception:
                rec["checkpoints"].pop()
                raise
            self.kv.put_json(f"exp:{exp_id}", rec)
            self._maybe_notify(exp_id, rec)
            return {"experiment": exp_id, "checkpoint": name, "index": k, "alpha": alpha_k,
                    "runs": [r["run_id"] for r in ck["runs"].values()],
                    "vs_base": ck["runs"]["vs_base"]["run_id"],
                    "vs_best": ck["runs"].get("vs_best", {}).get("run_id"), "status": "ready"}

    def _create_runs(self, exp_id: str, rec: dict, ck: dict) -> None:
        """The checkpoint's runs: vs the base and, once some checkpoint beat the base, vs the best so far."""
        best = self._signal(rec).best_checkpoint      # from the verdicts before this checkpoint's own runs
        name = ck["checkpoint"]
        refs = ["base"] + ([best] if best is not None and best != name else [])
        a_run = ck["alpha"] / len(refs)
        bpc = rec["budget_per_checkpoint"]
        budget = max(1, bpc // len(refs)) if bpc else None
        tuned = rec["outputs"][name]
        for ref in refs:
            base_out = rec["outputs"][ref]
            pairs = [{"id": p["id"], "prompt": p["text"], "base": base_out[p["id"]], "tuned": tuned[p["id"]],
                      **({"slices": p["slices"]} if p.get("slices") else {})} for p in rec["prompts"]]
            spec = {"name": f"{rec['name']}: {name} vs {ref}", "pairs": pairs, "judges": rec["judges"],
                    "alpha": a_run, "margin": rec["margin"], "budget": budget,
                    "experiment": {"experiment": exp_id, "checkpoint": name, "against": ref,
                                   "base_ref": ref, "tuned_ref": name}}
            if rec.get("method"):
                spec["method"] = rec["method"]
            ck["runs"]["vs_base" if ref == "base" else "vs_best"] = {"run_id": self.runs.create_run(spec),
                                                                     "against": ref}
        ck["status"] = "ready"

    def _generate_then_compare(self, exp_id: str, name: str) -> None:
        import logging
        rec = self.get(exp_id)
        outs: dict[str, dict[str, str]] = {}
        error = None
        try:
            for side in ("base", name):
                if side not in rec["outputs"]:
                    outs[side] = self._outputs(rec, side)
        except Exception as e:  # noqa: BLE001 - reported in the checkpoint's status
            error = str(e)
        with self._guard(exp_id):
            rec = self.get(exp_id)
            ck = next(c for c in rec["checkpoints"] if c["checkpoint"] == name)
            if error is None:
                rec["outputs"].update(outs)
                try:
                    self._create_runs(exp_id, rec, ck)
                except Exception as e:  # noqa: BLE001
                    error = str(e)
            if error is not None:
                ck["status"], ck["error"] = "failed", error
                logging.getLogger("tiebreak.experiments").warning("checkpoint %s of %s failed: %s",
                                                                  name, exp_id, error)
            self.kv.put_json(f"exp:{exp_id}", rec)
            self._maybe_notify(exp_id, rec)

    # ------------------------------------------------------------------------------------------- signal
    def rule(self, rec: dict) -> SignalRule:
        return SignalRule(**rec["rule"])

    def verdicts(self, rec: dict) -> builtins.list[CheckpointVerdict]:
        out = []
        for c in rec["checkpoints"]:
            views = {}
            for slot, r in c["runs"].items():
                st = r.get("final")
                if st is None:
                    st = self.runs.run_status(r["run_id"])
                    if st.get("decision") in FINAL:
                        r["final"] = {k: st.get(k) for k in ("decision", "estimate", "interval", "labels", "alpha")}
                views[slot] = ComparisonView.from_status(r["run_id"], st, r["against"])
            if "vs_base" not in views:   # still generating its outputs, or failed: shown, not counted
                views["vs_base"] = ComparisonView("", c.get("status", "generating"), alpha=c["alpha"])
            out.append(CheckpointVerdict(c["checkpoint"], c["index"], c["alpha"], views["vs_base"],
                                         views.get("vs_best")))
        return out

    def _signal(self, rec: dict) -> Signal:
        return self.rule(rec).evaluate(self.verdicts(rec))

    def signal(self, exp_id: str) -> dict:
        with self._guard(exp_id):
            rec = self.get(exp_id)
            sig = self._signal(rec)
            self._maybe_notify(exp_id, rec, sig)
            self.kv.put_json(f"exp:{exp_id}", rec)
        d = sig.to_dict()
        d["experiment"] = exp_id
        return d

    def _maybe_notify(self, exp_id: str, rec: dict, sig: Signal | None = None) -> None:
        sig = sig or self._signal(rec)
        key = list(sig.key())
        if rec.get("last_signal") != key:
            changed = rec.get("last_signal") is not None or sig.stop or sig.best_checkpoint is not None
            rec["last_signal"] = key
            if rec.get("webhook") and changed:
                payload = sig.to_dict()
                payload["experiment"] = exp_id
                self.notifier(rec["webhook"], payload)

    def refresh_all(self) -> int:
        """Recompute the signal of every experiment with a webhook and unfinished runs (firing the webhook on a
        change). Returns how many were checked."""
        n = 0
        for exp_id in self.list():
            rec = self.kv.get_json(f"exp:{exp_id}")
            if not rec or not rec.get("webhook"):
                continue
            if all("final" in r for c in rec["checkpoints"] for r in c["runs"].values()):
                continue
            try:
                self.signal(exp_id)
                n += 1
            except Exception as e:  # noqa: BLE001 - one broken experiment must not stop the others
                import logging
                logging.getLogger("tiebreak.experiments").warning("signal refresh of %s failed: %s", exp_id, e)
        return n

    def start_watcher(self, interval: float = 2.0) -> threading.Event:
        """A daemon thread calling refresh_all every ``interval`` s, so webhooks fire when a run decides even
        if nobody reads the signal. Set the returned event to stop it."""
        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(interval):
                self.refresh_all()
        th = threading.Thread(target=loop, name="tiebreak-experiment-signals", daemon=True)
        th.start()
        self._watcher = stop
        self._watcher_thread = th
        return stop

    def stop_watcher(self, timeout: float = 10.0) -> None:
        """Stop the thread of ``start_watcher`` (if any) and wait for its current refresh to finish."""
        stop, th = getattr(self, "_watcher", None), getattr(self, "_watcher_thread", None)
        if stop is not None:
            stop.set()
        if th is not None:
            th.join(timeout)

    def run_ids(self, exp_id: str) -> builtins.list[str]:
        rec = self.get(exp_id)
        return [r["run_id"] for c in rec["checkpoints"] for r in c["runs"].values()]


# ------------------------------------------------------------------------------- in-process run backend
Voter = Callable[[list[dict]], list[dict[str, float]]]   # pairs (with base_ref/tuned_ref) -> judge votes per pair


class LocalRuns:
    """Runs held in memory over sampler.engine.Comparison: the replay benchmark, tests, and a service without
    Redis. Pairs carry ``judge_votes`` or a ``voter`` fills them (e.g. recorded verdicts, or a judges.Jury)."""

    def __init__(self, voter: Voter | None = None, seed: int | None = None, method: str | None = None,
                 **config: Any) -> None:
        self.voter = voter
        self.method = method
        self.config = config             # extra ComparisonConfig fields (e.g. grid_resolution)
        self._rng = np.random.default_rng(seed)
        self._runs: dict[str, dict] = {}
        self._lock = threading.RLock()

    def create_run(self, spec: dict) -> str:
        from sampler.engine import Comparison, ComparisonConfig
        pairs = [dict(p) for p in spec["pairs"]]
        meta = spec.get("experiment") or {}
        for p in pairs:
            p.setdefault("base_ref", meta.get("base_ref"))
            p.setdefault("tuned_ref", meta.get("tuned_ref"))
        if spec.get("judges") and self.voter is not None and any("judge_votes" not in p for p in pairs):
            for p, v in zip(pairs, self.voter(pairs), strict=True):
                p.setdefault("judge_votes", v)
        names = sorted({j for p in pairs for j in (p.get("judge_votes") or {})})
        votes = np.array([[(p.get("judge_votes") or {}).get(j, math.nan) for j in names] for p in pairs],
                         dtype=float).reshape(len(pairs), len(names))
        method = spec.get("method") or self.method or ("active" if names else "classical")
        cfg = ComparisonConfig(alpha=spec.get("alpha", 0.05), margin=spec.get("margin", 0.0),
                               budget=spec.get("budget"), method=method, **self.config)
        rng = np.random.default_rng(self._rng.integers(2**63))
        with self._lock:
            run_id = "run_" + uuid.uuid4().hex[:12]
            self._runs[run_id] = {"spec": {k: v for k, v in spec.items() if k != "pairs"}, "pairs": pairs,
                                  "cmp": Comparison(votes if names else None, n_items=len(pairs), config=cfg, rng=rng)}
        return run_id

    def run_status(self, run_id: str) -> dict:
        with self._lock:
            r = self._runs[run_id]
            st = r["cmp"].status()
        return {"run_id": run_id, "n_pairs": st.n_items, "labels": st.labels, "estimate": st.estimate,
                "interval": [st.lower, st.upper], "alpha": st.alpha, "decision": st.decision.value,
                "pending": st.pending}

    def pair(self, run_id: str, index: int) -> dict:
        return self._runs[run_id]["pairs"][index]

    def next(self, run_id: str, k: int = 1) -> list[int]:
        with self._lock:
            c = self._runs[run_id]["cmp"]
            pend = c.pending_items()
            return pend[:k] if pend else c.next_items(k)

    def label(self, run_id: str, index: int, y: float) -> None:
        with self._lock:
            self._runs[run_id]["cmp"].record_label(index, y)

    def open_runs(self) -> list[str]:
        with self._lock:
            return [rid for rid, r in self._runs.items() if not r["cmp"].decision.final]

    def annotate(self, annotator: Callable[[dict], float], run_ids: Sequence[str] | None = None,
                 max_labels: int | None = None) -> int:
        """Answer every open run's queue with ``annotator(pair) -> y`` until all are decided; returns labels."""
        n = 0
        while True:
            ids = [r for r in (run_ids or self.open_runs()) if not self._runs[r]["cmp"].decision.final]
            progressed = False
            for rid in ids:
                items = self.next(rid, 1)
                if not items:
                    continue
                self.label(rid, items[0], annotator(self.pair(rid, items[0])))
                n += 1
                progressed = True
                if max_labels is not None and n >= max_labels:
                    return n
            if not progressed:
                return n
