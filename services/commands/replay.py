"""`tiebreak replay`: benchmark and demo of the sequential comparison on recorded human labels."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import typer

HELP = "Replay the sequential comparison on recorded human labels (schema of shared/data/README.md)."
EPILOG = (
    "Examples:  tiebreak replay ../shared/data/chatbot_arena_ppr.jsonl --all-pairs --min-items 200 --json  |  "
    "tiebreak replay ../shared/data/vicuna80_qlora_prd.jsonl --base guanaco-7b --tuned gpt-4 --method active  |  "
    "tiebreak replay ../shared/data/pandalm_testset.jsonl --symmetrize --runs 200 --method classical"
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
) -> None:
    from sampler.engine import METHODS, ComparisonConfig
    from sampler.replay import prior_from_pools
    from sampler.replay import replay as run_replay
    from services.data import DataError, load_items, select_pools

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
        pools = select_pools(items, base, tuned, all_pairs, min_items, names)
    except DataError as exc:
        bad(str(exc))
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
    rows = []
    for op in pools:
        pool = op.pool.symmetrized() if symmetrize else op.pool
        calibration = None
        if everything:
            same = {op.base, op.tuned}
            calibration = prior_from_pools([o.pool for o in everything if {o.base, o.tuned} != same])
        summary = run_replay(pool, config, runs, seed, prior=calibration)
        labels = summary.labels
        row = {
            "base": op.base, "tuned": op.tuned, "items": len(pool.votes), "theta": round(summary.theta, 6),
            "method": method, "runs": runs, "prior": prior, "decisions": summary.counts(),
            "wrong": summary.wrong(symmetrized=symmetrize),
            "mean_labels": round(float(labels.mean()), 3), "median_labels": float(np.median(labels)),
        }
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
    console.print(f"pairs {summary_row['pairs']} · total mean labels {summary_row['total_mean_labels']:.1f} · "
                  f"decided {decided}/{summary_row['runs_total']} · wrong {summary_row['wrong']} · "
                  f"{seconds:.1f} s")
