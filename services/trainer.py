# Over 400 lines: the whole trainer-side SDK (client + HF/Lightning callbacks) is one module, importable alone.
"""Trainer side of the stop-training signal: light to import (httpx, stdlib, and sampler.decision, itself
stdlib only; no Ray, vLLM, numpy needed).

    from tiebreak.services.trainer import TiebreakClient, TiebreakTrainerCallback
    client = TiebreakClient("http://tiebreak:8000", experiment="exp_…", token=os.environ["TIEBREAK_TOKEN"])
    cb = TiebreakTrainerCallback(client)
    trainer = cb.attach(transformers.Trainer(..., callbacks=[cb]))   # attach: the verdicts go through Trainer.log

* ``on_save`` (HF) / ``on_save_checkpoint`` + ``on_validation_end`` (Lightning): the main process submits the
  checkpoint just written (``POST /v1/experiments/{exp}/checkpoints``) from a background thread, so training never
  waits for the server (which may generate outputs and judge them).
* ``on_step_end`` / ``on_train_batch_end``: the main process polls ``GET /v1/experiments/{exp}/signal`` at most
  every ``min_interval`` seconds (cached in between: a step costs a clock read); the decision is broadcast to every
  rank (``torch.distributed.broadcast_object_list`` for HF when a process group is initialised,
  ``trainer.strategy.broadcast`` for Lightning) and sets ``control.should_training_stop`` / ``trainer.should_stop``.
* A server that cannot be reached never stops or crashes training: the error is logged and the last signal kept.
* The verdicts go to the trainer's own loggers (TensorBoard, W&B, MLflow, ... whatever the user configured;
  tiebreak imports none of them): whenever a checkpoint's comparison has news (more labels, a new interval, a
  decision) the main process logs ``checkpoint_metrics`` of it — HF through ``Trainer.log`` (needs
  ``callback.attach(trainer)``; without it the row only goes to ``state.log_history``), Lightning through
  ``logger.log_metrics`` of every ``trainer.loggers``. Keys (``METRIC_KEYS``):

      tiebreak/theta_vs_base   estimate of θ = P(checkpoint preferred to the base)
      tiebreak/lower, /upper   its anytime-valid interval
      tiebreak/theta_vs_best, /lower_vs_best, /upper_vs_best   the same against the best checkpoint so far
                               (= vs base while no checkpoint beat the base)
      tiebreak/labels          human labels of this checkpoint's comparisons
      tiebreak/decision        its verdict against the best so far, coded ``DECISION_CODES``:
                               1 better, 0 equivalent, -1 worse, 2 running, 3 undecided
      tiebreak/decision_vs_base  the same coding, against the base
      tiebreak/alpha           the α this checkpoint got (α-spending)
      tiebreak/checkpoint_step the training step in the checkpoint's name (its index if none): which
                               checkpoint the row describes (rows are logged at the current step)
      tiebreak/stop            1 when the stop signal says stop, else 0
      tiebreak/stop_reason     ``REASON_CODES``: 0 none, 1 target, 2 regression, 3 plateau, 4 budget, 5 slice-regression
      tiebreak/labels_total    human labels of the whole experiment

  The HF ``TensorBoardCallback`` and ``WandbCallback`` prefix every key with ``train/``
  (``train/tiebreak/theta_vs_base``); Lightning loggers keep the keys as they are.

How a checkpoint is described to the server: ``model_spec(path)`` (default: a LoRA adapter folder — one with
``adapter_config.json`` — becomes ``{"backend": "vllm", "model": <its base_model_name_or_path>, "lora": path}``,
any other folder ``{"backend": "vllm", "model": path}``, a ``.gguf`` file ``{"backend": "gguf", "path": path}``)
or, when ``outputs_fn(path) -> {prompt_id: text}`` is given, pre-generated outputs.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from tiebreak.sampler.decision import FINAL_DECISIONS, Decision

log = logging.getLogger("tiebreak.trainer")


def default_model_spec(path: str | os.PathLike) -> dict:
    p = Path(path)
    if p.is_file() and p.suffix == ".gguf":
        return {"backend": "gguf", "path": str(p.resolve())}
    cfg = p / "adapter_config.json"
    if cfg.exists():
        try:
            base = json.loads(cfg.read_text()).get("base_model_name_or_path")
        except (OSError, ValueError):
            base = None
        if base:
            return {"backend": "vllm", "model": base, "lora": str(p.resolve())}
    return {"backend": "vllm", "model": str(p.resolve())}


class TiebreakError(RuntimeError):
    pass


# ------------------------------------------------------------------------------------ logged scalars
DECISION_CODES: dict[str, float] = {Decision.BETTER: 1.0, Decision.EQUIVALENT: 0.0, Decision.WORSE: -1.0,
                                    Decision.RUNNING: 2.0, Decision.UNDECIDED: 3.0}
REASON_CODES = {None: 0.0, "target": 1.0, "regression": 2.0, "plateau": 3.0, "budget": 4.0,
                "slice-regression": 5.0}
METRIC_KEYS = ("tiebreak/theta_vs_base", "tiebreak/lower", "tiebreak/upper", "tiebreak/theta_vs_best",
               "tiebreak/lower_vs_best", "tiebreak/upper_vs_best", "tiebreak/labels", "tiebreak/decision",
               "tiebreak/decision_vs_base", "tiebreak/alpha", "tiebreak/checkpoint_step", "tiebreak/stop",
               "tiebreak/stop_reason", "tiebreak/labels_total")


def checkpoint_step(name: str, default: int) -> int:
    """The training step in a checkpoint's name (its last number: ``checkpoint-500`` -> 500,
    ``epoch=0-step=40`` -> 40), else ``default``."""
    m = re.search(r"(\d+)(?!.*\d)", name)
    return int(m.group(1)) if m else default


def checkpoint_metrics(row: dict | None, signal: dict) -> dict[str, float]:
    """The ``tiebreak/*`` scalars of one checkpoint row of GET /v1/experiments/{exp}/signal (``row`` None: only
    the signal's own scalars). Decisions and the stop reason are numbers (``DECISION_CODES``, ``REASON_CODES``)
    so that every logger takes them."""
    m: dict[str, float] = {}
    if row is not None:
        base, best = row["vs_base"], row.get("vs_best") or row["vs_base"]
        running = DECISION_CODES[Decision.RUNNING]
        m = {"tiebreak/theta_vs_base": float(base["estimate"]), "tiebreak/lower": float(base["lower"]),
             "tiebreak/upper": float(base["upper"]), "tiebreak/theta_vs_best": float(best["estimate"]),
             "tiebreak/lower_vs_best": float(best["lower"]), "tiebreak/upper_vs_best": float(best["upper"]),
             "tiebreak/labels": float(row.get("labels", 0)),
             "tiebreak/decision": DECISION_CODES.get(str(row.get("decision")), running),
             "tiebreak/decision_vs_base": DECISION_CODES.get(str(base.get("decision")), running),
             "tiebreak/alpha": float(row.get("alpha", 0.0)),
             "tiebreak/checkpoint_step": float(checkpoint_step(row["checkpoint"], int(row.get("index", 0))))}
    m["tiebreak/stop"] = 1.0 if signal.get("stop") else 0.0
    m["tiebreak/stop_reason"] = REASON_CODES.get(signal.get("reason"), 0.0)
    m["tiebreak/labels_total"] = float(signal.get("labels", 0))
    return m


class SignalNews:
    """Which rows of successive signals are news: a checkpoint whose comparisons have labels or a decision and
    changed (decision, labels or interval) since it was last reported, and the stop signal when it changed."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple] = {}
        self._stop: tuple | None = (False, None)
        self._last: dict | None = None

    @staticmethod
    def _key(row: dict) -> tuple:
        cmps = [row["vs_base"], row.get("vs_best") or row["vs_base"]]
        return (row.get("decision"), row.get("labels"), *((c.get("decision"), c.get("lower"), c.get("upper"))
                                                          for c in cmps))

    def news(self, signal: dict | None) -> list[tuple[str | None, dict[str, float]]]:
        """[(checkpoint or None, checkpoint_metrics)] for every piece of news in ``signal`` since the last call."""
        if not signal or signal is self._last:   # the client keeps the same dict until its next poll
            return []
        self._last = signal
        out: list[tuple[str | None, dict[str, float]]] = []
        for row in signal.get("checkpoints", []):
            if not row.get("vs_base", {}).get("run_id"):
                continue   # outputs still being generated: no comparison yet
            if row.get("labels", 0) == 0 and row.get("decision") not in FINAL_DECISIONS:
                continue
            key = self._key(row)
            if self._seen.get(row["checkpoint"]) != key:
                self._seen[row["checkpoint"]] = key
                out.append((row["checkpoint"], checkpoint_metrics(row, signal)))
        stop = (bool(signal.get("stop")), signal.get("reason"))
        if stop != self._stop:
            self._stop = stop
            if not out:
                out.append((None, checkpoint_metrics(None, signal)))
        return out


class TiebreakClient:
    """Submit checkpoints and read the stop signal of one experiment."""

    def __init__(self, server: str, experiment: str, token: str | None = None, *, min_interval: float = 30.0,
                 timeout: float = 30.0, transport: httpx.BaseTransport | None = None) -> None:
        if not experiment:
            raise ValueError("experiment must be given (the id POST /v1/experiments returned)")
        self.server = server.rstrip("/")
        self.experiment = experiment
        token = token if token is not None else os.environ.get("TIEBREAK_TOKEN")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.server, headers=headers, timeout=timeout, transport=transport)
        self.min_interval = float(min_interval)
        self.last_signal: dict | None = None
        self._last_poll = -float("inf")
        self._q: queue.Queue | None = None
        self._worker: threading.Thread | None = None
        self.submitted: list[dict] = []
        self.errors: list[str] = []

    # --------------------------------------------------------------------------------------- requests
    def _url(self, tail: str) -> str:
        return f"/v1/experiments/{self.experiment}{tail}"

    def submit_checkpoint(self, checkpoint: str, model: dict | None = None,
                          outputs: dict[str, str] | None = None) -> dict:
        """POST the checkpoint now (blocking); returns {runs: [...], ...}. Raises TiebreakError on a 4xx/5xx."""
        if (model is None) == (outputs is None):
            raise ValueError("give exactly one of model or outputs")
        body: dict[str, Any] = {"checkpoint": checkpoint}
        if model is not None:
            body["model"] = model
        else:
            body["outputs"] = outputs
        r = self._http.post(self._url("/checkpoints"), json=body)
        if r.status_code >= 400:
            raise TiebreakError(f"submitting {checkpoint}: HTTP {r.status_code} {r.text[:500]}")
        out = r.json()
        self.submitted.append({"checkpoint": checkpoint, **out})
        self._last_poll = -float("inf")   # a new checkpoint: the next poll goes to the server
        return out

    def submit_async(self, checkpoint: str, make_body: Callable[[], dict]) -> None:
        """Queue a submission for the background thread (``make_body() -> {model: ...} | {outputs: ...}``
        runs there too, e.g. generating outputs)."""
        if self._q is None:
            self._q = queue.Queue()
            self._worker = threading.Thread(target=self._work, name="tiebreak-submit", daemon=True)
            self._worker.start()
        self._q.put((checkpoint, make_body))

    def _work(self) -> None:
        assert self._q is not None
        while True:
            ckpt, make_body = self._q.get()
            try:
                self.submit_checkpoint(ckpt, **make_body())
            except Exception as e:  # noqa: BLE001 - never crash training
                msg = f"tiebreak: could not submit {ckpt}: {e}"
                self.errors.append(msg)
                log.warning(msg)
            finally:
                self._q.task_done()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until queued submissions are sent. Returns False on timeout."""
        if self._q is None:
            return True
        end = None if timeout is None else time.monotonic() + timeout
        while self._q.unfinished_tasks:
            if end is not None and time.monotonic() > end:
                return False
            time.sleep(0.01)
        return True

    def signal(self, force: bool = False) -> dict | None:
        """The experiment's signal; polls the server at most every ``min_interval`` s unless ``force``."""
        now = time.monotonic()
        if not force and now - self._last_poll < self.min_interval:
            return self.last_signal
        self._last_poll = now
        try:
            r = self._http.get(self._url("/signal"))
            if r.status_code >= 400:
                raise TiebreakError(f"HTTP {r.status_code} {r.text[:300]}")
            self.last_signal = r.json()
        except Exception as e:  # noqa: BLE001 - a dead server must not stop or crash training
            msg = f"tiebreak: signal poll failed: {e}"
            self.errors.append(msg)
            log.warning(msg)
        return self.last_signal

    def should_stop(self, force: bool = False) -> bool:
        s = self.signal(force)
        return bool(s and s.get("stop"))

    def close(self) -> None:
        self.flush(timeout=60)
        self._http.close()


def _body_for(path: str, model_spec: Callable[[str], dict] | None,
              outputs_fn: Callable[[str], dict[str, str]] | None) -> Callable[[], dict]:
    def make() -> dict:
        if outputs_fn is not None:
            return {"outputs": outputs_fn(path)}
        return {"model": (model_spec or default_model_spec)(path)}
    return make


class _HFCallback:
    """``transformers.TrainerCallback``: submit on save, poll on step end, stop every rank when signalled."""

    def __init__(self, client: TiebreakClient, *, model_spec: Callable[[str], dict] | None = None,
                 outputs_fn: Callable[[str], dict[str, str]] | None = None, wait_for_submit: bool = False,
                 sync_every: int = 1) -> None:
        if sync_every < 1:
            raise ValueError("sync_every must be >= 1")
        self.sync_every = sync_every   # steps between checks (each check is one broadcast across ranks)
        self.client = client
        self.model_spec = model_spec
        self.outputs_fn = outputs_fn
        self.wait_for_submit = wait_for_submit
        self.stopped_at: int | None = None
        self.reason: str | None = None
        self.trainer: Any = None
        self.news = SignalNews()
        self.logged: list[dict] = []      # every row logged: {"step", "checkpoint", **tiebreak/* scalars}
        self._warned_unattached = False

    def attach(self, trainer: Any) -> Any:
        """Log the tiebreak scalars through ``trainer.log`` (so every reporting callback — TensorBoard, W&B,
        MLflow, ... — receives them). A callback only gets args/state/control from the HF Trainer, never the
        trainer itself, hence this call: ``cb.attach(Trainer(..., callbacks=[cb]))``. Returns the trainer."""
        self.trainer = trainer
        return trainer

    def _log_news(self, state) -> None:
        for ck, metrics in self.news.news(self.client.last_signal):
            self.logged.append({"step": state.global_step, "checkpoint": ck, **metrics})
            if self.trainer is not None:
                self.trainer.log(dict(metrics))
                continue
            state.log_history.append({**metrics, "step": state.global_step})
            if not self._warned_unattached:
                self._warned_unattached = True
                log.warning("tiebreak: call callback.attach(trainer) to send the tiebreak/* scalars to the "
                            "trainer's loggers; until then they only go to state.log_history")

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return control
        path = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        self.client.submit_async(f"checkpoint-{state.global_step}", _body_for(path, self.model_spec, self.outputs_fn))
        if self.wait_for_submit:
            self.client.flush()
        return control

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.sync_every:   # the same on every rank: all skip or all broadcast
            return control
        stop = self.client.should_stop() if state.is_world_process_zero else False
        if state.is_world_process_zero:
            self._log_news(state)
        stop = _broadcast_torch(stop)
        if stop:
            control.should_training_stop = True
            if self.stopped_at is None:
                self.stopped_at = state.global_step
                sig = self.client.last_signal or {}
                self.reason = sig.get("reason")
                if state.is_world_process_zero:
                    log.warning("tiebreak: stopping training at step %s (%s; best %s)", state.global_step,
                                self.reason, sig.get("best_checkpoint"))
        return control

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.client.flush(timeout=60)
        return control


def _broadcast_torch(value: bool) -> bool:
    """Rank 0's value on every rank when torch.distributed is initialised; the value itself otherwise."""
    try:
        import torch.distributed as dist
    except ImportError:
        return value
    if not (dist.is_available() and dist.is_initialized()):
        return value
    obj = [value]
    dist.broadcast_object_list(obj, src=0)
    return bool(obj[0])


class _LightningCallback:
    """Lightning ``Callback``: submit each saved checkpoint, poll on batch end, ``trainer.should_stop``.

    Checkpoints: ``on_save_checkpoint`` fires while ModelCheckpoint writes; the file path is only known after,
    so submission happens on the next ``on_train_batch_end``/``on_validation_end`` with the file ModelCheckpoint
    saved last (or ``checkpoint_path_fn(trainer)`` when given); the checkpoint is named after the file."""

    def __init__(self, client: TiebreakClient, *, model_spec: Callable[[str], dict] | None = None,
                 outputs_fn: Callable[[str], dict[str, str]] | None = None,
                 checkpoint_path_fn: Callable[[Any], str] | None = None) -> None:
        self.client = client
        self.model_spec = model_spec
        self.outputs_fn = outputs_fn
        self.checkpoint_path_fn = checkpoint_path_fn
        self._pending_save = False
        self._submitted: set[str] = set()
        self.stopped_at: int | None = None
        self.news = SignalNews()
        self.logged: list[dict] = []      # every row logged: {"step", "checkpoint", **tiebreak/* scalars}

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        self._pending_save = True

    def _submit_saved(self, trainer) -> None:
        if not self._pending_save or not trainer.is_global_zero:
            return
        cb = getattr(trainer, "checkpoint_callback", None)
        path = (self.checkpoint_path_fn(trainer) if self.checkpoint_path_fn else
                getattr(cb, "_last_checkpoint_saved", None) or getattr(cb, "last_model_path", None)
                or getattr(cb, "best_model_path", None))
        if not path or not os.path.exists(path):
            return
        name = Path(path).stem
        if name == "last":   # ModelCheckpoint(save_last=True) reuses one file name
            name = f"last-step={trainer.global_step}"
        self._pending_save = False
        if name in self._submitted:
            return
        self._submitted.add(name)
        self.client.submit_async(name, _body_for(path, self.model_spec, self.outputs_fn))

    def _poll(self, trainer) -> None:
        self._submit_saved(trainer)
        stop = self.client.should_stop() if trainer.is_global_zero else False
        if trainer.is_global_zero:
            self._log_news(trainer)
        stop = bool(trainer.strategy.broadcast(stop, src=0))
        if stop:
            trainer.should_stop = True
            if self.stopped_at is None:
                self.stopped_at = trainer.global_step

    def _log_news(self, trainer) -> None:
        """Through every logger the user configured (``trainer.loggers``); none configured: kept in ``logged``."""
        for ck, metrics in self.news.news(self.client.last_signal):
            self.logged.append({"step": trainer.global_step, "checkpoint": ck, **metrics})
            for lg in trainer.loggers:
                lg.log_metrics(dict(metrics), step=trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._poll(trainer)

    def on_validation_end(self, trainer, pl_module):
        self._poll(trainer)

    def on_train_epoch_end(self, trainer, pl_module):
        self._poll(trainer)

    def on_train_end(self, trainer, pl_module):
        self._submit_saved(trainer)
        if trainer.is_global_zero:
            self.client.flush(timeout=60)


# The public classes subclass transformers.TrainerCallback / lightning's Callback, so they are built on first
# access (PEP 562): `import tiebreak.services.trainer` itself stays httpx + stdlib.
_BUILT: dict[str, type] = {}


def _build(name: str) -> type:
    if name == "TiebreakTrainerCallback":
        try:
            from transformers import TrainerCallback
        except ImportError as e:
            raise ImportError("TiebreakTrainerCallback needs transformers: pip install 'tiebreak[trainer]'") from e
        return type(name, (_HFCallback, TrainerCallback), {"__doc__": _HFCallback.__doc__, "__module__": __name__})
    base = None
    for mod in ("lightning.pytorch", "pytorch_lightning"):
        try:
            base = __import__(mod, fromlist=["Callback"]).Callback
            break
        except ImportError:
            continue
    if base is None:
        raise ImportError("TiebreakLightningCallback needs lightning: pip install lightning")
    return type(name, (_LightningCallback, base), {"__doc__": _LightningCallback.__doc__, "__module__": __name__})


def __getattr__(name: str) -> Any:
    if name in ("TiebreakTrainerCallback", "TiebreakLightningCallback"):
        if name not in _BUILT:
            _BUILT[name] = _build(name)
        return _BUILT[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
