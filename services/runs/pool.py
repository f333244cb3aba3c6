"""A run's pool of pairs: creating a run, adding pairs, putting them into the sampler, and the judge pipeline's
hooks (status, generated pairs, streamed votes).

Owns what a run is made of and how its comparisons are built: validation of a new run (criteria, slices of
interest and their up-front warnings, pair ids, supplied judge votes), the stored pair rows (the blind
left/right order is drawn here), and activation: pairs [n_active, n) go into the run's
``sampler.family.ComparisonFamily`` -- the overall question, each criterion and each slice of interest on one
draw sequence, Holm's step-down over them (``services.runs.shared_draws``; runs created with ``draws: "shared"``
in their meta) -- or, for a run stored before it, into one ``Comparison`` for the overall verdict plus one per
criterion, with alpha split by Bonferroni over (1 + slices) x (1 + criteria) questions
(``sampler.slices.slice_alpha``). Pairs are labellable at once, whether or not their judge votes have arrived
(a streaming run: votes that arrive later go through ``add_votes``, see sampler.engine).

Every method that changes an owned run takes its ``RunRuntime`` (the facade, ``RunService``, resolves and
routes it) and writes through ``RunWriter``.
"""

from __future__ import annotations

import math
import secrets
import uuid
from collections.abc import Callable

import numpy as np

from tiebreak.sampler.engine import Comparison, ComparisonConfig
from tiebreak.sampler.slices import MAX_SLICES, best_case_labels, membership_matrix, slice_alpha
from tiebreak.services.errors import BadInput, Conflict
from tiebreak.services.runs.loader import vote_matrices
from tiebreak.services.runs.model import OVERALL, RunRuntime, no_votes
from tiebreak.services.runs.prior import carried_prior, prior_for
from tiebreak.services.runs.shared_draws import SHARED, grow_family, start_family, uses_family
from tiebreak.services.runs.writer import RunWriter
from tiebreak.services.store import RedisStore


def votes_missing(rt: RunRuntime) -> bool:
    """Judges are configured and some pair has no votes yet."""
    return bool(rt.meta["judges"]) and rt.n_voted < len(rt.pair_ids)


class RunPool:
    def __init__(self, store: RedisStore, writer: RunWriter, *, start_pipeline: Callable[[str], None],
                 clock: Callable[[], float], default_lease_ttl_s: float):
        self.store = store
        self.writer = writer
        self.start_pipeline = start_pipeline      # hand a run to the judge pipeline (generation, votes)
        self.clock = clock
        self.default_lease_ttl_s = default_lease_ttl_s

    def create(self, spec: dict) -> str:
        """Store a new run (``spec`` = validated RunCreate as a dict; complete or not at all, see
        ``RedisStore.create_run``). Returns the run id; its owner then loads it and calls ``activate``."""
        rid = uuid.uuid4().hex[:16]
        now = self.clock()
        judges = list(spec.get("judges") or [])
        meta = {
            "run_id": rid, "name": spec["name"], "created_at": now, "status": "ready",
            "alpha": spec.get("alpha") or 0.05, "margin": spec.get("margin") or 0.0, "budget": spec.get("budget"),
            "method": spec.get("method"), "criteria": list(spec.get("criteria") or []),
            "judges": judges, "judge_names": [], "labels_per_pair": spec.get("labels_per_pair") or 1,
            "lease_ttl_s": spec.get("lease_ttl_s") or self.default_lease_ttl_s,
            "webhook_url": spec.get("webhook_url"), "seed": spec["seed"] if spec.get("seed") is not None else secrets.randbits(32),
            "judge_budget": spec.get("judge_budget") or "all",
            "n_active": 0, "generate": None, "progress": {}, "error": None, "decided_notified": False,
            "draws": SHARED,    # one draw sequence for every question (services.runs.shared_draws)
        }
        for c in meta["criteria"]:
            if c == OVERALL:
                raise BadInput("criteria must not contain 'overall' (the overall verdict is always collected)",
                               "criteria")
        source = spec["pairs"] if spec.get("pairs") is not None else spec["generate"]["prompts"]
        meta["slices"], meta["slice_warnings"] = self._slices_of_interest(
            source, spec.get("slices_of_interest"), meta["alpha"], len(meta["criteria"]), meta["budget"])
        if spec.get("pairs") is not None:
            pairs = spec["pairs"]
            self._check_pair_ids(pairs, set())
            supplied = [p.get("judge_votes") for p in pairs]
            if any(v is not None for v in supplied):
                # Supplied votes are all the run will get (no judge runs for them): a pair without any would
                # never become ready, and the run would wait for it for ever.
                missing = next((i for i, v in enumerate(supplied) if v is None), None)
                if missing is not None:
                    raise BadInput(f"pair {pairs[missing].get('id')!r} has no judge_votes while other pairs do: "
                                   "give every pair judge_votes ({judge: null} for a missing vote), or none "
                                   "and name the judges to run", f"pairs.{missing}.judge_votes")
                names = sorted({k for v in supplied if v for k in v})
                meta["judge_names"] = names
            elif judges:
                meta["judge_names"] = self._judge_names(judges)
                meta["status"] = "judging"
            meta["calibration_prior"] = carried_prior(self.store, spec, meta)
            self.store.stage_pairs(rid, *self._pair_rows(meta, pairs))
            self.store.create_run(rid, meta, now)      # the commit point: before it the run does not exist
        else:
            # A streaming generate run: the pool (one pair per prompt) is fixed now, so the pairs are stored
            # and drawn from the start; their outputs are filled in as they are made (``outputs_ready``), the
            # pairs the sampler drew first (docs/statistics.md, "Generate runs stream").
            gen = spec["generate"]
            meta["generate"] = gen
            meta["generate_streams"] = True     # runs stored before have no pairs until every output exists
            meta["status"] = "generating"
            meta["judge_names"] = self._judge_names(judges) if judges else []
            meta["progress"] = {"generated": 0, "to_generate": 2 * len(gen["prompts"]), "pairs_generated": 0,
                                "judged": 0}
            meta["calibration_prior"] = carried_prior(self.store, spec, meta)
            pairs = [{"id": p["id"], "prompt": p["text"], "base": "", "tuned": "", "slices": p.get("slices")}
                     for p in gen["prompts"]]
            self._check_pair_ids(pairs, set())
            rows, votes = self._pair_rows(meta, pairs)
            for row in rows:
                row["generated"] = False
            self.store.stage_pairs(rid, rows, votes)
            self.store.create_run(rid, meta, now)
        return rid

    @staticmethod
    def _slices_of_interest(items: list[dict], wanted: list[str] | None, alpha: float, n_criteria: int,
                            budget: int | None) -> tuple[list[str], list[str]]:
        """The slices that get a verdict, and warnings said up front (sampler.slices)."""
        sizes: dict[str, int] = {}
        for p in items:
            for s in p.get("slices") or []:
                sizes[s] = sizes.get(s, 0) + 1
        if wanted is None:
            names = sorted(sizes)
            if len(names) > MAX_SLICES:
                raise BadInput(f"the pairs carry {len(names)} slices; a run follows at most {MAX_SLICES} (each "
                               f"one costs alpha): pass slices_of_interest with the ones that matter",
                               "slices_of_interest")
        else:
            names = list(wanted)
            if len(set(names)) != len(names):
                raise BadInput("slices_of_interest must be distinct", "slices_of_interest")
            if len(names) > MAX_SLICES:
                raise BadInput(f"{len(names)} slices of interest; at most {MAX_SLICES} (each one costs alpha)",
                               "slices_of_interest")
            for i, s in enumerate(names):
                if s not in sizes:
                    raise BadInput(f"slice of interest {s!r} tags no pair; slices present: "
                                   f"{', '.join(sorted(sizes)) or '(none: give pairs a slices field)'}",
                                   f"slices_of_interest.{i}")
        warnings = []
        each = slice_alpha(alpha, len(names), 1 + n_criteria)
        for s in names:
            n = sizes[s]
            need = best_case_labels(n, each)
            if need >= n:
                warnings.append(f"slice {s!r} has {n} pair{'s' if n != 1 else ''}: even if every label agrees, only labelling all "
                                f"{n} can decide it (its verdict then describes exactly those pairs)")
            elif budget is not None and need > budget:
                warnings.append(f"slice {s!r} needs at least {need} labels to be decided; the budget is {budget}")
        return names, warnings

    @staticmethod
    def _judge_names(judges: list) -> list[str]:
        from tiebreak.services.pipeline import judge_name

        names = [judge_name(j) for j in judges]
        if len(set(names)) != len(names):
            raise BadInput(f"judges must be distinct, got {names}", "judges")
        return names

    @staticmethod
    def _check_pair_ids(pairs: list[dict], existing: set[str] | dict) -> None:
        seen: set[str] = set()
        for i, p in enumerate(pairs):
            pid = p["id"]
            if pid in seen or pid in existing:
                raise Conflict(f"pair id {pid!r} is used twice; pair ids must be unique within a run",
                               f"pairs.{i}.id")
            seen.add(pid)

    def _pair_rows(self, meta: dict, pairs: list[dict]) -> tuple[list[dict], list[dict | None]]:
        """The stored rows of new pairs (blind order drawn here) and their votes per criterion."""
        names = meta["judge_names"]
        rows = []
        votes: list[dict | None] = []
        for i, p in enumerate(pairs):
            rows.append({"id": p["id"], "prompt": p["prompt"], "base": p["base"], "tuned": p["tuned"],
                         "tuned_left": bool(secrets.randbits(1))})
            if p.get("slices"):  # stored with the pair, never put into an annotator's view
                rows[-1]["slices"] = list(p["slices"])
            jv = p.get("judge_votes")
            if jv is not None:
                unknown = set(jv) - set(names)
                if unknown:
                    raise BadInput(f"judge_votes names unknown judges {sorted(unknown)}; this run's judges are "
                                   f"{names}", f"pairs.{i}.judge_votes")
                votes.append({OVERALL: [jv.get(n) for n in names]})
            elif not names:
                votes.append(None)
            elif meta["status"] == "judging" or meta["judges"]:
                votes.append(None)  # the judge pipeline will vote
            else:
                votes.append({OVERALL: [None] * len(names)})  # supplied-votes run: this pair has none
        return rows, votes

    def _store_pairs(self, rt: RunRuntime, pairs: list[dict]) -> None:
        """Append pairs to a run and its meta in one write (all of them or none) and index them in memory."""
        start = len(rt.pair_ids)
        rows, votes = self._pair_rows(rt.meta, pairs)
        self.writer.commit(rt, cmds=self.store.pair_cmds(rt.rid, start, rows, votes), meta=rt.meta)
        for i, row in enumerate(rows):
            rt.pair_index[row["id"]] = (start + i, bool(row["tuned_left"]))
            rt.pair_ids.append(row["id"])

    def add_pairs(self, rt: RunRuntime, pairs: list[dict]) -> dict:
        """Append pairs to an owned run (a new pool version once labels exist)."""
        rid = rt.rid
        with rt.lock:
            self.writer.flush(rt)
            if rt.meta.get("generate") and rt.meta["status"] == "generating":
                raise Conflict("this run is still generating outputs; add pairs when its status is 'ready'",
                               "pairs")
            self._check_pair_ids(pairs, rt.pair_index)
            meta = rt.meta
            if meta.get("judge_names") and not meta["judges"]:      # a run over supplied votes only
                missing = next((i for i, p in enumerate(pairs) if p.get("judge_votes") is None), None)
                if missing is not None:
                    raise BadInput(f"pair {pairs[missing].get('id')!r} has no judge_votes, and this run's votes "
                                   "are supplied, not judged: give judge_votes ({judge: null} for a missing vote)",
                                   f"pairs.{missing}.judge_votes")
            if meta["judges"] and any(p.get("judge_votes") is None for p in pairs):
                meta["status"] = "judging"
            self._store_pairs(rt, pairs)
            self.activate(rt)
            if meta["status"] == "judging":
                self.start_pipeline(rid)
            return {"run_id": rid, "added": len(pairs), "n_pairs": len(rt.pair_ids)}

    def activate(self, rt: RunRuntime) -> bool:
        """Put pairs [n_active, n) into the comparisons: at once, whether or not their judge votes have
        arrived (a streaming run: votes that arrive later go through ``add_votes``, see sampler.engine)."""
        meta = rt.meta
        lo, hi = meta["n_active"], len(rt.pair_ids)
        if hi <= lo:
            return False
        mats, voted = vote_matrices(self.store, rt, lo, hi)
        slice_names = list(meta.get("slices") or [])
        member = None
        if slice_names:
            rows = self.store.get_pairs(rt.rid, range(lo, hi))
            _, member = membership_matrix([(r or {}).get("slices") for r in rows], slice_names)
        if uses_family(meta):
            if rt.family is None:
                start_family(rt, mats, voted, (slice_names, member) if member is not None else None, hi - lo)
            else:
                grow_family(rt, hi - lo, mats, voted, member)
        else:
            self._activate_per_comparison(rt, mats, voted, slice_names, member, hi - lo)
        meta["n_active"] = hi
        rt.n_voted = self.store.n_votes(rt.rid)
        if meta["status"] in ("judging", "generating") and not rt.ungenerated:
            # labellable now; "judging" while votes still arrive ("generating" while outputs are still made)
            meta["status"] = "judging" if votes_missing(rt) else "ready"
        # a snapshot that includes every operation so far (add_items is not a logged operation)
        self.writer.commit(rt, meta=meta, snapshot=True)
        return True

    @staticmethod
    def _activate_per_comparison(rt: RunRuntime, mats: dict, voted: np.ndarray | None, slice_names: list[str],
                                 member: np.ndarray | None, n_new: int) -> None:
        """Activation of a run stored before shared draws: one comparison per criterion, each drawing its own
        pairs, Bonferroni over (overall + slices) x (overall verdict + criteria); no slices: alpha / (1 + C)."""
        meta = rt.meta
        crits = rt.criteria
        alpha_each = slice_alpha(meta["alpha"], len(slice_names), 1 + len(crits))
        for k, name in enumerate([OVERALL, *crits]):
            mat = mats.get(name)
            if name in rt.comps:
                comp = rt.comps[name]
                width = comp.votes.shape[1]
                if mat is not None and mat.shape[1] == width:
                    comp.add_items(mat, slice_member=member, voted=voted if width else None)
                else:
                    comp.add_items(no_votes(n_new, width), slice_member=member)
            else:
                has_votes = mat is not None and mat.shape[1] > 0
                method = (meta.get("method") or "active") if has_votes else "classical"
                cfg = ComparisonConfig(alpha=alpha_each, margin=meta["margin"], budget=meta["budget"], method=method)
                rng = np.random.default_rng([int(meta["seed"]), k])
                rt.comps[name] = Comparison(mat if has_votes else no_votes(n_new), config=cfg, rng=rng,
                                            voted=voted if has_votes else None,
                                            prior=prior_for(meta, name) if method != "classical" else None)
                if member is not None:
                    rt.comps[name].set_slices(slice_names, member)

    # ------------------------------------------------------------------------------------- pipeline
    # The pipeline's calls run only on the run's owner (the replica that started the pipeline, or took the run
    # over and resumed it): a pipeline whose replica lost the run gets NotOwner and stops.
    def set_status(self, rt: RunRuntime, status: str, error: str | None = None, progress: dict | None = None) -> None:
        with rt.lock:
            rt.meta["status"] = status
            if error is not None:
                rt.meta["error"] = error
            if progress:
                rt.meta["progress"].update(progress)
            self.writer.commit(rt, meta=rt.meta)

    def add_generated_pairs(self, rt: RunRuntime, pairs: list[dict]) -> None:
        """Called by the pipeline when generation finished: store the pairs (status goes to judging/ready)."""
        with rt.lock:
            have = set(rt.pair_index)
            new = [p for p in pairs if p["id"] not in have]
            rt.meta["status"] = "judging" if rt.meta["judges"] else "ready"
            if new:
                self._store_pairs(rt, new)
            else:
                self.writer.commit(rt, meta=rt.meta)
            self.activate(rt)

    def outputs_ready(self, rt: RunRuntime, outputs: dict[str, tuple[str, str]], made: int | None = None) -> int:
        """A streaming generate run's outputs {pair_id: (base, tuned)} are made: write them into the pairs'
        rows, then make the pairs leasable (the write is stored first, so a lease never shows an empty pair).
        When the last pair has its outputs the run goes on to judging (or is ready). ``made``: outputs made so
        far, both sides counted (the status' ``progress.generated``). Returns how many pairs still wait."""
        with rt.lock:
            idxs = [rt.pair_index[pid][0] for pid in outputs if pid in rt.pair_index]
            idxs = [i for i in idxs if i in rt.ungenerated]
            rows = {}
            for i, row in zip(idxs, self.store.get_pairs(rt.rid, idxs), strict=True):
                assert row is not None
                row["base"], row["tuned"] = outputs[rt.pair_ids[i]]
                row.pop("generated", None)
                rows[i] = row
            left = rt.ungenerated - set(rows)
            progress = rt.meta["progress"]
            progress["pairs_generated"] = len(rt.pair_ids) - len(left)
            if made is not None:
                progress["generated"] = made
            if not left and rt.meta["status"] == "generating":
                rt.meta["status"] = "judging" if votes_missing(rt) else "ready"
            self.writer.commit(rt, cmds=self.store.pair_update_cmds(rt.rid, rows), meta=rt.meta)
            rt.ungenerated = left
            return len(left)

    def generation_wanted(self, rt: RunRuntime) -> list[str]:
        """Pairs the sampler has drawn whose outputs are not made yet, in draw order: the generator makes
        them before any other (a human waits for them)."""
        with rt.lock:
            if not rt.ungenerated or not rt.comps:
                return []
            pending = rt.family.pending_items() if rt.family is not None else \
                [i for c in rt.comps.values() for i in c.pending_items()]
            return [rt.pair_ids[i] for i in dict.fromkeys(pending) if i in rt.ungenerated]

    def add_votes(self, rt: RunRuntime, votes: dict[int, dict]) -> None:
        """Store judge votes {idx: {criterion: [p per judge]}} (called by the pipeline per batch).

        The pairs are labellable already (streaming): each comparison gets the votes now and uses them from its
        next calibration refit. The "votes" op is logged in the same write as the votes, so a reload replays
        it at the same point between draws and labels (exact state)."""
        rid = rt.rid
        with rt.lock:
            if votes:
                active = sorted(int(i) for i in votes if int(i) < rt.meta["n_active"])
                if active and rt.comps:
                    for name, comp in rt.comps.items():
                        width = comp.votes.shape[1]
                        if width:
                            rows = [[math.nan if x is None else float(x)
                                     for x in ((votes[i].get(name) if votes[i] else None) or [None] * width)]
                                    for i in active]
                            comp.add_votes(active, rows)
                    rt.ops.append(["votes", active])
                self.writer.commit(rt, cmds=self.store.vote_cmds(rid, votes))
            rt.n_voted = self.store.n_votes(rid)
            rt.meta["progress"]["judged"] = rt.n_voted
            if rt.meta["status"] == "judging" and rt.meta["n_active"] == len(rt.pair_ids) \
                    and not votes_missing(rt):
                rt.meta["status"] = "ready"
            self.writer.commit(rt, meta=rt.meta)
            self.activate(rt)

    def unvoted_pairs(self, rt: RunRuntime) -> list[tuple[int, dict]]:
        rid = rt.rid
        have = set(self.store.all_votes(rid))
        todo = [i for i in range(len(rt.pair_ids)) if i not in have]
        out = []
        for i, pair in zip(todo, self.store.get_pairs(rid, todo), strict=True):
            if pair is None:  # every pair is stored when the run is created (RedisStore.create_run)
                raise RuntimeError(f"run {rid}: pair {i} is missing from the store")
            out.append((i, pair))
        return out
