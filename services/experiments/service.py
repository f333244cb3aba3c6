"""``ExperimentService``: experiments over a RunBackend, persisted in a KV store: validates and records
experiments, turns each checkpoint into its runs (vs the base, vs the best), and recomputes and publishes the
signal (``services/experiments/signal.py``). Statistics: services/experiments/__init__.py."""

from __future__ import annotations

import builtins
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from tiebreak.sampler.decision import spend_alpha
from tiebreak.services.errors import ServiceError
from tiebreak.services.experiments.errors import ExperimentConflict, ExperimentError, NotFound
from tiebreak.services.experiments.signal import FINAL, CheckpointVerdict, ComparisonView, Signal, SignalRule
from tiebreak.services.experiments.store import KV, MemoryKV
from tiebreak.services.experiments.validate import check_model_field, check_outputs, experiment_record
from tiebreak.services.pipeline import generate_in_process
from tiebreak.services.webhooks import WebhookSender, signal_notifier

log = logging.getLogger("tiebreak.experiments")


class RunBackend(Protocol):
    """The service's runs (POST /v1/runs, GET /v1/runs/{id} shapes)."""

    def create_run(self, spec: dict) -> str: ...

    def run_status(self, run_id: str) -> dict: ...


Generator = Callable[[dict, list[dict]], dict[str, str]]   # (model spec, prompts [{id, text}]) -> {id: text}
Notifier = Callable[[str, dict], None]                      # (webhook url, signal json)


class ExperimentService:
    """Experiments over a RunBackend, persisted in a KV store. Thread-safe for one process."""

    def __init__(self, runs: RunBackend, kv: KV | None = None, generator: Generator | None = None,
                 notifier: Notifier | None = None, async_generation: bool = False,
                 validate_judges: bool = True) -> None:
        self.runs = runs
        self.validate_judges = validate_judges     # False: judge names are labels of supplied votes (replay)
        self.async_generation = async_generation   # model-spec checkpoints: generate in a thread
        self.kv = kv if kv is not None else MemoryKV()
        # outputs of model specs: the pipeline's GenerationWorker (Ray actors in the service; in-process here)
        self.generator = generator or generate_in_process
        # the one webhook sender (services/webhooks.py: retries, Idempotency-Key); the app passes its outbox
        self.own_sender: WebhookSender | None = None
        if notifier is None:
            self.own_sender = WebhookSender()
            notifier = signal_notifier(self.own_sender)
        self.notifier = notifier
        self._lock = threading.RLock()

    def _guard(self, exp_id: str) -> Any:
        """Serialise read-modify-writes of one experiment: in this process and across replicas (KV lock)."""
        stack = contextlib.ExitStack()
        stack.enter_context(self._lock)
        stack.enter_context(self.kv.lock(f"exp:{exp_id}"))
        return stack

    # -------------------------------------------------------------------------------------- experiments
    def create_experiment(self, body: dict) -> str:
        rec = experiment_record(body, validate_judges=self.validate_judges)
        exp_id = rec["experiment"]
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

    def _outputs(self, rec: dict, side: str) -> dict[str, str]:
        """Outputs of the base or a checkpoint, generated once and kept in the record."""
        if side not in rec["outputs"]:
            spec = rec["base"] if side == "base" else next(c["model"] for c in rec["checkpoints"] if c["checkpoint"] == side)
            try:
                out = self.generator(spec, rec["prompts"])
            except Exception as e:  # noqa: BLE001 - a bad spec or a dead backend: a 4xx naming the model
                raise ExperimentError("base" if side == "base" else "model",
                                      f"could not generate the outputs of {side} with {spec}: {e}") from e
            rec["outputs"][side] = check_outputs("base" if side == "base" else "model", out, rec["prompts"])
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
                raise ExperimentConflict("checkpoint", f"{name!r} was already submitted to {exp_id}")
            model = None
            if "outputs" in body:
                rec["outputs"][name] = check_outputs("outputs", body["outputs"], rec["prompts"])
            else:
                model = check_model_field("model", body["model"])
                if "outputs" in model:
                    rec["outputs"][name] = check_outputs("model.outputs", model["outputs"], rec["prompts"])
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
                    "vs_best": ck["runs"].get("vs_best", {}).get("run_id"), "status": "ready",
                    "calibration_from": ck.get("calibration_from", [])}

    def _create_runs(self, exp_id: str, rec: dict, ck: dict) -> None:
        """The checkpoint's runs: vs the base and, once some checkpoint beat the base, vs the best so far."""
        best = self._signal(rec).best_checkpoint      # from the verdicts before this checkpoint's own runs
        name = ck["checkpoint"]
        refs = ["base"] + ([best] if best is not None and best != name else [])
        a_run = ck["alpha"] / len(refs)
        bpc = rec["budget_per_checkpoint"]
        budget = max(1, bpc // len(refs)) if bpc else None
        tuned = rec["outputs"][name]
        carried = self._carried_from(rec, ck)
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
            if rec.get("judge_budget"):
                spec["judge_budget"] = rec["judge_budget"]
            ck["runs"]["vs_base" if ref == "base" else "vs_best"] = {"run_id": self._create_run(spec, ck, carried),
                                                                     "against": ref}
        ck["status"] = "ready"

    def _carried_from(self, rec: dict, ck: dict) -> builtins.list[str]:
        """The runs whose judge calibration this checkpoint's runs start from: every run of the experiment's
        earlier checkpoints that has labels (same judges by construction). Read when the runs are created and
        fixed from then on, so each run's prior is a function of other runs' labels only (docs/statistics.md,
        "Carried calibration"). Empty when the experiment turned it off, has no judges, or is labels-only."""
        if not rec.get("carry_calibration", True) or not rec.get("judges") or rec.get("method") == "classical":
            return []
        out = []
        for c in rec["checkpoints"]:
            if c is ck:
                continue
            for r in c["runs"].values():
                labels = (r.get("final") or {}).get("labels")
                if labels is None:
                    labels = self.runs.run_status(r["run_id"]).get("labels", 0)
                if labels:
                    out.append(r["run_id"])
        return out

    def _create_run(self, spec: dict, ck: dict, carried: builtins.list[str]) -> str:
        """Create one run of checkpoint ``ck``, carrying the calibration of ``carried`` when there is one. If the
        runs cannot give one (e.g. none of their labelled pairs has judge votes yet: a streaming run), the run
        starts without it and the checkpoint says why (``calibration_not_carried``)."""
        if carried:
            try:
                rid = self.runs.create_run({**spec, "calibration_from": carried})
                ck["calibration_from"] = carried
                return rid
            except ServiceError as e:
                if not str(getattr(e, "field", "") or "").startswith("calibration_from"):
                    raise
                ck["calibration_not_carried"] = str(e)
        return self.runs.create_run(spec)

    def _generate_then_compare(self, exp_id: str, name: str) -> None:
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
                log.warning("checkpoint %s of %s failed: %s",
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
                log.warning("signal refresh of %s failed: %s", exp_id, e)
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
