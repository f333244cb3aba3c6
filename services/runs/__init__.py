"""Runs (/v1/runs): pools of pairs, leases, labels, the sampler, decisions — split into parts with narrow
interfaces; ``RunService`` (services/runs/service.py) is the facade everything outside calls.

One API process owns each run at a time (``ownership``; other replicas forward to it): the run is rehydrated
from Redis into a ``RunRuntime`` (``loader``) on first use, and every change is written back in one atomic,
fenced write (``writer`` -> ``RedisStore.apply``) before the call returns, so a restart (or kill -9) resumes
every run exactly.

A run asks the overall question, one per criterion, and each of those per slice of interest, all on ONE draw
sequence (``sampler.family.ComparisonFamily``, ``shared_draws``): the overall question's design picks every
pair, one label serves every question the pair belongs to, Holm's step-down keeps P(any verdict wrong) <= alpha,
and the run hands out pairs until every question is final. A run stored before that (no ``draws`` flag in its
meta) keeps its old shape and loads and continues as written: one ``Comparison`` for the overall verdict plus
one per criterion, each drawing its own pairs, alpha split by Bonferroni over (1 + slices) x (1 + criteria)
questions (``pool``), pairs handed out until the overall comparison is finished (``leases``). With ``labels_per_pair``
= k > 1 a pair is handed to k different annotators and the sampler gets the mean of their verdicts once all k
are in (``intake``). A decision's ``run.decided`` webhook is written to the Redis outbox in the same write
(``status.DecidedEvents``; services/webhooks.py delivers it at least once).
"""

from tiebreak.services.runs.model import (
    OVERALL,
    VERDICTS,
    Lease,
    NotOwner,
    OwnershipLost,
    Pending,
    RemoteError,
    RunRuntime,
    offer_label,
)
from tiebreak.services.runs.service import ROUTED, RunService

__all__ = ["OVERALL", "ROUTED", "VERDICTS", "Lease", "NotOwner", "OwnershipLost", "Pending", "RemoteError",
           "RunRuntime", "RunService", "offer_label"]
