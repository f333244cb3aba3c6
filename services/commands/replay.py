"""`tiebreak replay`: benchmark and demo of the sequential comparison on recorded human labels."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import typer

HELP = "Replay the sequential comparison on recorded human labels (schema of shared/data/README.md)."
EPILOG = (
    "Examples:  tiebreak replay ../shared/data/chatbot_arena_ppr.jsonl --all-pairs --min-items 200 --json  |  "
    "tiebreak replay ../shared/data/vicuna80_qlora_prd.jsonl --base guanaco-7b --tuned gpt-4 --method active  |  "
    "tiebreak replay ../shared/data/pandalm_testset.jsonl --symmetrize --runs 200 --method classical  |  "
    "tiebreak replay ../shared/data/vicuna80_qlora_prd.jsonl --base guanaco-7b --tuned gpt4 --slices-from meta.category"
)


def replay(
    path: Path = typer.Argument(..., help="JSONL with human_votes, model_a, model_b, judges"),
    base: str | None = typer.Option(None, "--base", help="base model (with --tuned): items of that pair"),
    tuned: str | None = typer.Option(None, "--tuned", help="tuned model; oriented as response B"),
    all_pairs: bool = typer.Option(False, "--all-pairs", help="every unordered model pair (tuned = larger name)"),
    min_items: int = typer.Option(1, "--min-items", help="with --all-pairs: skip pairs with fewer items"),
    method: str = typer.Option("active", "--method", help="classical | ppi | active"),
    alpha: float = typer.Option(0.05, "--alpha", help="false-decision rate bound"),
    margin: float = typer.Option(0.0, "--margin", help="equivalence margin around 1/2"),
    budget: int | None = typer.Option(None, "--budget", help="human labels at most per run"),
    runs: int = typer.Option(20, "--runs", help="independent runs per pair"),
    seed: int = typer.Option(0, "--seed", help="seed; run r of a pair is reproducible on its own"),
    symmetrize: bool = typer.Option(False, "--symmetrize", help="add every item with A/B swapped (theta = 1/2)"),
    judges: str | None = typer.Option(None, "--judges", help="comma-separated judge names (default: all in file)"),
    json_out: bool = typer.Option(False, "--json", help="one JSON object per pair, then a summary line"),
    design: str = typer.Option("without-replacement", "--design",
                               help="without-replacement | with-replacement (reference design)"),
    cs: str = typer.Option("betting", "--cs", help="betting | asymptotic (asymptotically valid only)"),
    prior: str = typer.Option("none", "--prior",
                              help="none | other-pairs: start from a judge calibration learnt on the file's "
                                   "OTHER model pairs (never the replayed one), refined online"),
    slices_from: str = typer.Option("auto", "--slices-from",
                                    help="field holding each item's slices (dotted path, e.g. meta.category "
                                         "or slices); auto = the items' `slices` field when any item has one; "
                                         "none = no slices"),
    slices: str | None = typer.Option(None, "--slices",
                                      help="comma-separated slices of interest (default: every slice present); "
                                           "alpha is split over the overall verdict and these slices"),
) -> None:
    from tiebreak.sampler.engine import METHODS, ComparisonConfig
    from tiebreak.sampler.replay import prior_from_pools
    from tiebreak.sampler.replay import replay as run_replay
    from tiebreak.services.data import DataError, load_items, select_pools

    def bad(msg: str) -> None:
        typer.echo(f"error: {msg}", err=True)
        raise typer.Exit(2)

    if method not in METHODS:
        bad(f"--method {method!r} is not one of {', '.join(METHODS)}")
    if runs < 1:
        bad("--runs must be >= 1")
    try:
        config = ComparisonConfig(alpha=alpha, margin=margin, budget=budget, method=method, grid_resolution=20,
                                  design=design, confidence_sequence=cs)
    except ValueError as exc:
        bad(str(exc))
    try:
        items = load_items(path)
        names = [j.strip() for j in judges.split(",") if j.strip()] if judges else None
        if slices_from == "auto":
            slices_from = "slices" if any("slices" in row for row in items) else "none"
        pools = select_pools(items, base, tuned, all_pairs, min_items, names,
                             slices_from=None if slices_from == "none" else slices_from)
    except DataError as exc:
        bad(str(exc))
    wanted = [s.strip() for s in slices.split(",") if s.strip()] if slices else None
    if wanted and slices_from == "none":
        bad("--slices needs slices on the items: give --slices-from FIELD (e.g. meta.category)")
    if slices_from != "none":
        from tiebreak.sampler.slices import MAX_SLICES

        for op in pools:
            present = op.pool.slice_names()
            missing = [s for s in wanted or [] if s not in present]
            if missing:
                bad(f"--slices: {', '.join(missing)} tags no item of {op.base} / {op.tuned}; "
                    f"present: {', '.join(present) or '(none)'}")
            if len(wanted or present) > MAX_SLICES:
                bad(f"{len(wanted or present)} slices; at most {MAX_SLICES} (pick some with --slices)")
    if method != "classical" and pools and not pools[0].judges:
        bad(f"--method {method} needs judge verdicts, and this file has none; use --method classical")
    if prior not in ("none", "other-pairs"):
        bad(f"--prior {prior!r} is not one of none, other-pairs")
    everything = []
    if prior == "other-pairs":
        if method == "classical":
            bad("--prior other-pairs calibrates judges; it needs --method ppi or active")
        everything = select_pools(items, all_pairs=True, min_items=1, judges=list(pools[0].judges))
        if len(everything) < 2:
            bad("--prior other-pairs needs a file with several model pairs")

    start = time.perf_counter()
    rows: list[dict[str, Any]] = []   # one JSON row per model pair
    for op in pools:
        pool = op.pool.symmetrized() if symmetrize else op.pool
        calibration = None
        if everything:
            same = {op.base, op.tuned}
            calibration = prior_from_pools([o.pool for o in everything if {o.base, o.tuned} != same])
        of_interest = (wanted or pool.slice_names()) if slices_from != "none" else None
        summary = run_replay(pool, config, runs, seed, prior=calibration, slices=of_interest)
        labels = summary.labels
        row: dict[str, Any] = {
            "base": op.base, "tuned": op.tuned, "items": len(pool.votes), "theta": round(summary.theta, 6),
            "method": method, "runs": runs, "prior": prior, "decisions": summary.counts(),
            "wrong": summary.wrong(symmetrized=symmetrize),
            "mean_labels": round(float(labels.mean()), 3), "median_labels": float(np.median(labels)),
        }
        if of_interest:
            from tiebreak.sampler.slices import alpha_split_text

            row["alpha_split"] = alpha_split_text(alpha, len(of_interest))
            row["overall_mean_labels"] = round(float(summary.overall_labels.mean()), 3)
            row["family_wrong_runs"] = summary.family_wrong_runs(symmetrized=symmetrize)
            row["slices"] = {
                s: {"items": sum(1 for tags in pool.slices or () if s in tags),
                    "theta": round(summary.slice_theta[s], 6), "decisions": summary.slice_counts(s),
                    "wrong": summary.slice_wrong(s, symmetrized=symmetrize),
                    "mean_labels": round(float(summary.slice_labels(s).mean()), 3)}
                for s in of_interest}
        rows.append(row)
        if json_out:
            typer.echo(json.dumps(row))
    seconds = time.perf_counter() - start
    decided = sum(r["decisions"]["better"] + r["decisions"]["worse"] + r["decisions"]["equivalent"] for r in rows)
    summary_row = {
        "summary": True, "pairs": len(rows), "total_mean_labels": round(sum(r["mean_labels"] for r in rows), 3),
        "wrong": sum(r["wrong"] for r in rows), "decided": decided, "runs_total": runs * len(rows),
        "seconds": round(seconds, 3),
    }
    if any("slices" in r for r in rows):
        summary_row["total_overall_mean_labels"] = round(sum(r.get("overall_mean_labels", r["mean_labels"])
                                                             for r in rows), 3)
        summary_row["slice_wrong"] = sum(s["wrong"] for r in rows for s in r.get("slices", {}).values())
        summary_row["family_wrong_runs"] = sum(r.get("family_wrong_runs", r["wrong"]) for r in rows)
        summary_row["slices_decided"] = sum(s["decisions"]["better"] + s["decisions"]["worse"]
                                            + s["decisions"]["equivalent"]
                                            for r in rows for s in r.get("slices", {}).values())
        summary_row["slice_runs_total"] = sum(runs * len(r.get("slices", {})) for r in rows)
    if json_out:
        typer.echo(json.dumps(summary_row))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"tiebreak replay · {path.name} · method={method} alpha={alpha} margin={margin}")
    for col in ("base", "tuned", "items", "theta", "better", "worse", "equiv.", "undec.", "wrong", "mean labels"):
        table.add_column(col, justify="right" if col not in ("base", "tuned") else "left")
    for r in rows:
        d = r["decisions"]
        table.add_row(r["base"], r["tuned"], str(r["items"]), f"{r['theta']:.3f}", str(d["better"]),
                      str(d["worse"]), str(d["equivalent"]), str(d["undecided"]), str(r["wrong"]),
                      f"{r['mean_labels']:.1f}")
    console = Console()
    console.print(table)
    if "slice_wrong" in summary_row:
        st = Table(title="per slice (decisions over all runs)")
        for col in ("base", "tuned", "slice", "items", "theta", "better", "worse", "equiv.", "undec.", "wrong"):
            st.add_column(col, justify="right" if col not in ("base", "tuned", "slice") else "left")
        for r in rows:
            for name, s in r.get("slices", {}).items():
                d = s["decisions"]
                st.add_row(r["base"], r["tuned"], name, str(s["items"]), f"{s['theta']:.3f}", str(d["better"]),
                           str(d["worse"]), str(d["equivalent"]), str(d["undecided"]), str(s["wrong"]))
        console.print(st)
        console.print(f"{rows[0].get('alpha_split', '')} · labels at the overall verdict "
                      f"{summary_row['total_overall_mean_labels']:.1f} · runs with any wrong verdict "
                      f"{summary_row['family_wrong_runs']}")
    console.print(f"pairs {summary_row['pairs']} · total mean labels {summary_row['total_mean_labels']:.1f} · "
                  f"decided {decided}/{summary_row['runs_total']} · wrong {summary_row['wrong']} · "
                  f"{seconds:.1f} s")
