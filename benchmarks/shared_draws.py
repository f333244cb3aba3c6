"""Criteria and slices on one draw sequence (sampler.family): validity, labels, Holm vs Bonferroni.

    python -m benchmarks.shared_draws null --runs 1000            # family-wise error on symmetrized nulls
    python -m benchmarks.shared_draws criterion-null --runs 1000  # a null where ignoring pi_t would fail
    python -m benchmarks.shared_draws mixed-null --runs 1000      # null slices beside strong effects (Holm)
    python -m benchmarks.shared_draws labels --runs 20            # shared draws vs separate draws (criteria)
    python -m benchmarks.shared_draws vicuna --runs 20 [--symmetrize]   # Holm vs Bonferroni, Vicuna-80 categories

Criteria are SIMULATED (no shared data set has per-criterion human labels): criterion c's label equals the
overall label with probability rho_c and is otherwise an independent draw at rate p_c, so criteria are
correlated with the overall label and have their own theta_c. Prints one JSON line per table row.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from tiebreak.sampler.decision import Decision
from tiebreak.sampler.engine import Comparison, ComparisonConfig
from tiebreak.sampler.family import OVERALL, ComparisonFamily
from tiebreak.sampler.slices import membership_matrix

CRITERIA = (("accuracy", 0.8, 0.5), ("tone", 0.5, 0.6))  # (name, rho, p): simulated


def simulated_criteria(rng: np.random.Generator, y: np.ndarray, criteria=CRITERIA) -> np.ndarray:
    """Columns [overall, criterion...] of labels in {0, 1/2, 1}; see the module docstring."""
    cols = [y]
    for _, rho, p in criteria:
        own = (rng.random(y.size) < p).astype(float)
        cols.append(np.where(rng.random(y.size) < rho, y, own))
    return np.column_stack(cols)


def symmetrized_pool(rng: np.random.Generator, sizes=(8, 12, 5), overlap: int = 3, criteria=CRITERIA):
    """Slices of the given half-sizes, every pair duplicated with A/B swapped inside the same slices (for every
    criterion too), so every theta_c and theta_{c,s} is exactly 1/2; `overlap` pairs of slice 0 are also in
    slice 1; 6 pairs in no slice. Judges informative for each question (g and active weights non-trivial)."""
    names = [f"s{k}" for k in range(len(sizes))]
    tags: list[list[str]] = []
    for k, half in enumerate(sizes):
        for j in range(half):
            tags.append([names[k]] + ([names[1]] if k == 0 and j < overlap else []))
    tags += [[] for _ in range(3)]
    half_n = len(tags)
    y = rng.choice([0.0, 0.5, 1.0], p=[0.3, 0.1, 0.6], size=half_n)
    rows = simulated_criteria(rng, y, criteria)
    ys = np.vstack([rows, 1.0 - rows])
    votes = np.clip(0.2 + 0.6 * rows[:, :, None] + rng.normal(0, 0.15, rows.shape + (2,)), 0, 1)
    votes = np.concatenate([votes, 1.0 - votes])  # (N, questions, judges)
    return tags + tags, ys, votes


def question_names(n_criteria: int) -> list[str]:
    return [OVERALL] + [c for c, _, _ in CRITERIA[:n_criteria]]


def run_family(tags, ys: np.ndarray, votes: np.ndarray | None, method: str, alpha: float,
               rng: np.random.Generator, multiplicity: str = "holm", batch: int = 1, noise: bool = False,
               label_rng: np.random.Generator | None = None, budget: int | None = None,
               slice_names: list[str] | None = None) -> tuple[ComparisonFamily, int]:
    """Run to the end: ask `batch` pairs at a time, answer them in a shuffled order (all questions' labels of
    a pair at once). ys: (N, questions) labels, or an object array of vote arrays when noise. Returns the
    family and the labels at the overall verdict."""
    n, q = len(tags), ys.shape[1]
    names = question_names(q - 1)
    slices = membership_matrix(tags, slice_names) if any(tags) else None
    cfg = ComparisonConfig(alpha=alpha, method=method, grid_resolution=40 if n < 200 else 400,
                           pool_growth_alpha_share=0.0, label_noise=noise, budget=budget)
    vv = {nm: (votes[:, j, :] if votes is not None and method != "classical" else None) for j, nm in enumerate(names)}
    fam = ComparisonFamily.create(vv, cfg, rng, slices=slices, n_items=n, multiplicity=multiplicity)
    lr = label_rng or rng
    at_overall = None
    while not fam.finished:
        items = fam.next_items(batch)
        if not items:
            items = fam.pending_items()[:batch]
            if not items:
                break
        for i in lr.permutation(len(items)):
            item = items[i]
            fam.record_labels(item, {nm: _label(ys[item, j], lr) for j, nm in enumerate(names)})
        if at_overall is None and fam.leader.decision.final:
            at_overall = len(fam.leader.draws)
    return fam, at_overall if at_overall is not None else len(fam.leader.draws)


def _label(v, rng: np.random.Generator) -> float:
    if isinstance(v, np.ndarray):
        return float(v[rng.integers(v.size)]) if v.size > 1 else float(v[0])
    return float(v)


def run_separate(tags, ys: np.ndarray, votes: np.ndarray | None, method: str, alpha: float,
                 rng: np.random.Generator) -> int:
    """The scheme services/runs.py uses today: one Comparison per question with its own draws (Bonferroni over
    (1 + S)(1 + C)); the annotator is handed the first pending pair of any unfinished comparison, else a new
    draw of the first unfinished one, and labels every question of that pair; labels are offered to all.
    Returns the number of pairs labelled when every question is final."""
    n, q = len(tags), ys.shape[1]
    names = question_names(q - 1)
    slices = membership_matrix(tags) if any(tags) else None
    per = alpha / ((1 + (len(slices[0]) if slices else 0)) * q)
    comps = []
    for j in range(len(names)):
        cfg = ComparisonConfig(alpha=per, method=method, grid_resolution=40 if n < 200 else 400,
                               pool_growth_alpha_share=0.0)
        v = votes[:, j, :] if votes is not None and method != "classical" else None
        c = Comparison(v, n_items=n, config=cfg, rng=np.random.default_rng([int(rng.integers(2**31)), j]))
        if slices:
            c.set_slices(*slices)
        comps.append(c)
    labelled: set[int] = set()
    while not all(c.finished for c in comps):
        chosen = next((i for c in comps if not c.finished for i in c.pending_items() if i not in labelled), None)
        if chosen is None:
            for c in comps:
                if c.finished:
                    continue
                new = c.next_items(1)
                if new:
                    chosen = new[0]
                    break
        if chosen is None:
            break
        labelled.add(chosen)
        for j, c in enumerate(comps):
            c.offer_label(chosen, float(ys[chosen, j]))
    return len(labelled)


def wrong_questions(fam: ComparisonFamily, theta: dict[tuple[str, str | None], float]) -> int:
    bad = 0
    for qv in fam.status().questions:
        t = theta[(qv.criterion, qv.slice)]
        if (qv.decision is Decision.BETTER and t <= 0.5) or (qv.decision is Decision.WORSE and t >= 0.5):
            bad += 1
    return bad


def null_false_decisions(runs: int, method: str, alpha: float, seed: int, multiplicity: str,
                         batch: int = 4) -> dict:
    """Runs on symmetrized pools (every theta = 1/2) with 3 slices and 2 simulated criteria, labels in batches
    answered in shuffled order, to the end (pools are often exhausted). Any better/worse is false."""
    bad_runs = wrong = labels = 0
    for r in range(runs):
        rng = np.random.default_rng([seed, r])
        tags, ys, votes = symmetrized_pool(rng)
        fam, _ = run_family(tags, ys, votes, method, alpha, rng, multiplicity, batch)
        w = sum(q.decision in (Decision.BETTER, Decision.WORSE) for q in fam.status().questions)
        bad_runs += w > 0
        wrong += w
        labels += len(fam.leader.draws)
    return {"runs": runs, "method": method, "alpha": alpha, "multiplicity": multiplicity, "batch": batch,
            "runs_with_a_false_verdict": bad_runs, "false_verdicts": wrong, "mean_labels": labels / runs,
            "pairs": len(tags), "questions": len(fam.status().questions)}


def design_correlated_null(rng: np.random.Generator, half: int = 60):
    """A null the shared design can get wrong: group A (judge 2 missing, overall labels unpredictable from
    judge 1) and group B (both judges present and right); every pair twinned with A/B swapped, so theta = 1/2.
    The criterion is 1 on every A pair and 0 on every B pair: theta_c = 1/2 too, but the active design
    (residual spread: large on A) draws A pairs more often, so a criterion that ignored pi_t -- weighting its
    draws as if uniform -- would drift to "better". Returns (y, y_criterion, overall judge votes)."""
    y_a = rng.choice([0.0, 1.0], size=half)
    v_a = np.column_stack([0.5 + rng.normal(0, 0.05, half), np.full(half, np.nan)])
    y_b = rng.choice([0.0, 1.0], size=half)
    v_b = np.column_stack([0.1 + 0.8 * y_b, 0.1 + 0.8 * y_b]) + rng.normal(0, 0.05, (half, 2))
    y = np.concatenate([y_a, 1 - y_a, y_b, 1 - y_b])
    votes = np.vstack([v_a, np.column_stack([1 - v_a[:, 0], v_a[:, 1]]), v_b, 1 - v_b])
    yc = np.concatenate([np.ones(2 * half), np.zeros(2 * half)])
    return y, yc, np.clip(votes, 0, 1)


def criterion_null_false_decisions(runs: int, alpha: float, seed: int, multiplicity: str = "holm",
                                   batch: int = 4) -> dict:
    """design_correlated_null runs (overall + one criterion, active design), batches answered shuffled, to
    the end. Counts runs with any better/worse (all false) and how often the active design was in use."""
    bad = active = asked = 0
    for r in range(runs):
        rng = np.random.default_rng([seed, r])
        y, yc, votes = design_correlated_null(rng)
        fam = ComparisonFamily.create({OVERALL: votes, "criterion": None}, ComparisonConfig(
            alpha=alpha, method="active", grid_resolution=40, pool_growth_alpha_share=0.0), rng,
            multiplicity=multiplicity)
        while not fam.finished:
            items = fam.next_items(batch)
            if not items:
                break
            active += fam.leader.active_in_use
            asked += 1
            for i in rng.permutation(items):
                fam.record_labels(int(i), {OVERALL: y[i], "criterion": yc[i]})
        bad += any(q.decision in (Decision.BETTER, Decision.WORSE) for q in fam.status().questions)
    return {"runs": runs, "alpha": alpha, "multiplicity": multiplicity, "runs_with_a_false_verdict": bad,
            "active_share_of_batches": active / max(asked, 1)}


def mixed_pool(rng: np.random.Generator, strong: int = 6, strong_size: int = 20, null_half: int = 15):
    """Where Holm's later steps matter: `strong` slices with theta = 0.9 for the overall label and the
    criterion (they and the pool are decided quickly, which loosens Holm's levels for the rest) and two slices
    where every theta is exactly 1/2 (pairs twinned with A/B swapped). Only verdicts on the two null slices can
    be wrong. Returns (tags, ys (N, 2), votes (N, 2, 2), names of the null slices)."""
    tags: list[list[str]] = []
    rows = []
    for k in range(strong):
        y = (rng.random(strong_size) < 0.9).astype(float)
        yc = np.where(rng.random(strong_size) < 0.8, y, (rng.random(strong_size) < 0.9).astype(float))
        rows.append(np.column_stack([y, yc]))
        tags += [[f"strong{k}"]] * strong_size
    for k in range(2):
        y = rng.choice([0.0, 0.5, 1.0], p=[0.4, 0.2, 0.4], size=null_half)
        yc = np.where(rng.random(null_half) < 0.7, y, rng.choice([0.0, 1.0], size=null_half))
        half = np.column_stack([y, yc])
        rows.append(np.vstack([half, 1.0 - half]))
        tags += [[f"null{k}"]] * (2 * null_half)
    ys = np.vstack(rows)
    votes = np.clip(0.2 + 0.6 * ys[:, :, None] + rng.normal(0, 0.2, ys.shape + (2,)), 0, 1)
    return tags, ys, votes, ["null0", "null1"]


def mixed_null_false_decisions(runs: int, method: str, alpha: float, seed: int, multiplicity: str,
                               batch: int = 4) -> dict:
    """Runs on mixed_pool to the end: runs with a better/worse on a null slice (overall or criterion)."""
    bad = labels = 0
    decided_strong = 0
    for r in range(runs):
        rng = np.random.default_rng([seed, r])
        tags, ys, votes, nulls = mixed_pool(rng)
        fam, _ = run_family(tags, ys, votes, method, alpha, rng, multiplicity, batch)
        qs = fam.status().questions
        bad += any(q.slice in nulls and q.decision in (Decision.BETTER, Decision.WORSE) for q in qs)
        decided_strong += sum(q.decision is Decision.BETTER for q in qs if q.slice not in nulls)
        labels += len(fam.leader.draws)
    return {"runs": runs, "method": method, "alpha": alpha, "multiplicity": multiplicity,
            "runs_with_a_false_verdict": bad, "mean_labels": labels / runs,
            "better_verdicts_on_effects_per_run": decided_strong / runs}


def _arena_pool(path: Path):
    from tiebreak.services.data import load_items, select_pools

    items = load_items(Path(path))
    return select_pools(items, base="field", tuned="vicuna-13b", slices_from="slices")[0].pool


def labels_table(runs: int, seed: int, arena: Path, slices_of_interest: list[str] | None) -> list[dict]:
    """Arena vicuna-13b vs field (benchmarks.arena_slices) with simulated criteria: labels to finish every
    question with one shared draw sequence (Bonferroni and Holm) vs the separate-draws scheme."""
    pool = _arena_pool(arena)
    rows = []
    n = len(pool.votes)
    for method in ("classical", "active"):
        res: dict[str, list] = {"separate": [], "shared-bonferroni": [], "shared-holm": []}
        wrong: dict[str, int] = {k: 0 for k in res if k != "separate"}  # the separate scheme is not scored
        t0 = time.time()
        for r in range(runs):
            rng = np.random.default_rng([seed, r])
            y = np.array([float(v[rng.integers(v.size)]) for v in pool.votes])  # one vote per battle (Arena: 1)
            ys = simulated_criteria(rng, y)
            tags = [[s for s in t if slices_of_interest is None or s in slices_of_interest] for t in pool.slices]
            jv = np.repeat(pool.judge_votes[:, None, :], ys.shape[1], axis=1)  # judges on the overall verdict
            res["separate"].append(run_separate(tags, ys, jv, method, 0.05, np.random.default_rng([seed, r, 1])))
            for mult in ("bonferroni", "holm"):
                fam, _ = run_family(tags, ys, jv, method, 0.05, np.random.default_rng([seed, r, 2]), mult)
                res[f"shared-{mult}"].append(len(fam.leader.draws))
                theta = _thetas(fam, tags, ys)
                wrong[f"shared-{mult}"] += wrong_questions(fam, theta)
        for k, v in res.items():
            rows.append({"table": "labels", "data": f"arena vicuna-13b vs field, {n} pairs, simulated criteria "
                         f"{[c for c, _, _ in CRITERIA]}", "slices": slices_of_interest or "all",
                         "method": method, "scheme": k, "runs": runs, "mean_labels": float(np.mean(v)),
                         "wrong_verdicts": wrong.get(k), "seconds_all_schemes": round(time.time() - t0, 1)})
    return rows


def _thetas(fam: ComparisonFamily, tags, ys: np.ndarray) -> dict[tuple[str, str | None], float]:
    out: dict[tuple[str, str | None], float] = {}
    names = question_names(ys.shape[1] - 1)
    slice_names = fam.leader.slices.names if fam.leader.slices is not None else []
    for j, nm in enumerate(names):
        out[(nm, None)] = float(ys[:, j].mean())
        for s in slice_names:
            idx = [i for i, t in enumerate(tags) if s in t]
            out[(nm, s)] = float(ys[idx, j].mean())
    return out


def vicuna_table(runs: int, seed: int, path: Path, method: str, symmetrize: bool) -> list[dict]:
    """Holm vs Bonferroni on Vicuna-80, every model pair, its categories as slices, overall label only (one
    random crowd vote per label, label_noise). Same seeds for both: the runs differ only by the procedure."""
    from tiebreak.services.data import load_items, select_pools

    pools = [p.pool for p in select_pools(load_items(Path(path)), all_pairs=True, slices_from="meta.category")]
    rows = []
    for mult in ("bonferroni", "holm"):
        t0 = time.time()
        labels, at_overall, decided, slice_decided, wrong_runs, wrong = [], [], 0, 0, 0, 0
        for pool in pools:
            pool = pool.symmetrized() if symmetrize else pool
            tags = [list(t) for t in pool.slices or ()]
            ys = np.empty((len(pool.votes), 1), dtype=object)
            for i, v in enumerate(pool.votes):
                ys[i, 0] = v
            means = np.array([[v.mean()] for v in pool.votes])
            jv = pool.judge_votes[:, None, :]
            for r in range(runs):
                rng = np.random.default_rng([seed, r])
                fam, ov = run_family(tags, ys, jv, method, 0.05, rng, mult, noise=pool.noisy)
                labels.append(len(fam.leader.draws))
                at_overall.append(ov)
                st = fam.status()
                decided += st.questions[0].decision in (Decision.BETTER, Decision.WORSE, Decision.EQUIVALENT)
                slice_decided += sum(q.decision in (Decision.BETTER, Decision.WORSE) for q in st.questions[1:])
                theta = _thetas(fam, tags, means)
                w = wrong_questions(fam, {k: (0.5 if symmetrize else v) for k, v in theta.items()})
                wrong += w
                wrong_runs += w > 0
        rows.append({"table": "vicuna", "symmetrized": symmetrize, "method": method, "multiplicity": mult,
                     "runs": len(labels), "overall_decided": decided, "slice_verdicts": slice_decided,
                     "mean_labels_overall": float(np.mean(at_overall)), "mean_labels_all": float(np.mean(labels)),
                     "runs_with_a_wrong_verdict": wrong_runs, "wrong_verdicts": wrong,
                     "seconds": round(time.time() - t0, 1)})
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("table", choices=["null", "criterion-null", "mixed-null", "labels", "vicuna"])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--seed", type=int, default=14)
    ap.add_argument("--alpha", type=float, default=0.05)
    ap.add_argument("--methods", nargs="+", default=["classical", "active"])
    ap.add_argument("--arena", type=Path, default=Path("/tmp/arena_v13.jsonl"))
    ap.add_argument("--vicuna", type=Path, default=Path("../shared/data/vicuna80_qlora_prd.jsonl"))
    ap.add_argument("--slices", nargs="*", default=None, help="labels table: slices of interest (default all)")
    ap.add_argument("--symmetrize", action="store_true")
    a = ap.parse_args(argv)
    if a.table == "criterion-null":
        for mult in ("bonferroni", "holm"):
            t0 = time.time()
            row = criterion_null_false_decisions(a.runs, a.alpha, a.seed, mult)
            print(json.dumps({"table": "design-correlated null", **row, "seconds": round(time.time() - t0, 1)}),
                  flush=True)
    elif a.table in ("mixed-null", "null"):
        simulate = mixed_null_false_decisions if a.table == "mixed-null" else null_false_decisions
        for method in a.methods:
            for mult in ("bonferroni", "holm"):
                t0 = time.time()
                row = simulate(a.runs, method, a.alpha, a.seed, mult)
                print(json.dumps({"table": a.table.replace("-", " "), **row, "seconds": round(time.time() - t0, 1)}),
                      flush=True)
    elif a.table == "labels":
        for row in labels_table(a.runs, a.seed, a.arena, a.slices):
            print(json.dumps(row), flush=True)
    else:
        for method in a.methods:
            for row in vicuna_table(a.runs, a.seed, a.vicuna, method, a.symmetrize):
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
