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
experiment) receives an ``experiment.signal`` event (services/webhooks.py) whenever (stop, reason,
best_checkpoint) changes.

Modules: ``signal.py`` (the rule, pure), ``service.py`` (ExperimentService: records, checkpoints -> runs,
signal, watcher), ``validate.py`` (input -> record), ``store.py`` (KV: memory / Redis with fenced locks),
``local_runs.py`` (runs in memory), ``errors.py`` (members of services/errors.py's family).
"""

from tiebreak.services.experiments.errors import ExperimentConflict, ExperimentError, NotFound
from tiebreak.services.experiments.local_runs import LocalRuns
from tiebreak.services.experiments.service import ExperimentService, RunBackend
from tiebreak.services.experiments.signal import (
           FINAL,
           REASONS,
           CheckpointVerdict,
           ComparisonView,
           Signal,
           SignalRule,
)
from tiebreak.services.experiments.store import KV, LockLost, MemoryKV, RedisKV

__all__ = ["FINAL", "KV", "REASONS", "CheckpointVerdict", "ComparisonView", "ExperimentConflict", "ExperimentError",
           "ExperimentService", "LocalRuns", "LockLost", "MemoryKV", "NotFound", "RedisKV", "RunBackend", "Signal",
           "SignalRule"]
