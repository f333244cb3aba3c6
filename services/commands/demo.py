"""`tiebreak demo` — the main job (`make run`): service + embedded Redis + local Ray + live local judges +
a simulated annotator answering from recorded crowd votes, live view, HTML report."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from tiebreak.judges.defaults import DEFAULT_JURY

HELP = ("The whole system end to end on real recorded pairs (default: 600 PandaLM test pairs, 3 annotators each; "
        "--data vicuna80: GPT-4 vs Guanaco-7B on Vicuna-80): local judges vote live, a simulated annotator answers "
        "from the recorded crowd votes (--human: you label in the browser), side by side with labels only and "
        "with the judge verdicts recorded in the data; the runs stop at the decision and write the HTML reports.")
EPILOG = ("Examples:  tiebreak demo  |  tiebreak demo --human  |  tiebreak demo --data vicuna80 --pairs 80 --judges "
          "qwen2.5-coder-1.5b:pointwise  |  tiebreak demo --judges none --pairs 200 --json.  "
          "Exit codes: 0 decided, 1 error, 2 bad input, 3 undecided at budget.")


def demo(
    data: str = typer.Option("pandalm", "--data",
                             help="pandalm (600 PandaLM test pairs, a fixed-θ pool where the recorded judges save "
                                  "labels) | vicuna80 (Vicuna-80, GPT-4 vs Guanaco-7B: too few pairs to save any)"),
    pairs: int | None = typer.Option(None, "--pairs",
                                     help="pool size: N of the data's pairs, evenly spread (default: all 600 "
                                          "PandaLM pairs; 32 of the 80 Vicuna questions)"),
    judges: str = typer.Option(",".join(DEFAULT_JURY), "--judges",
                               help="comma-separated judges (preset[:pairwise|pointwise|rubric], .gguf path or feature:NAME); "
                                    "'none' = labels only"),
    human: bool = typer.Option(False, "--human", help="open the annotation page and wait for your labels"),
    alpha: float = typer.Option(0.05, "--alpha", help="bound on the probability of a wrong verdict"),
    margin: float = typer.Option(0.05, "--margin", help="equivalence margin around 1/2"),
    budget: int | None = typer.Option(None, "--budget", help="human labels at most (undecided after)"),
    seed: int | None = typer.Option(None, "--seed", help="seed of the runs and of the simulated annotator (default: "
                                    "the data's typical seed, 71 for pandalm: see docs/benchmarks.md; 0 for vicuna80)"),
    out: Path = typer.Option(Path("tiebreak-demo-report.html"), "--out", "-o", help="where to write the report"),
    data_dir: Path | None = typer.Option(
        None, "--data-dir", help="embedded Redis directory; keeps the judge-vote cache, so a rerun with the same "
        "pairs skips judging (default ~/.cache/tiebreak/demo)"),
    label_delay: float = typer.Option(0.2, "--label-delay", help="seconds the simulated annotator waits per label"),
    pipeline: str = typer.Option("ray", "--pipeline", help="ray (local Ray actors) | local (in-process)"),
    port: int = typer.Option(0, "--port", help="service port (default: a free one)"),
    json_out: bool = typer.Option(False, "--json", help="print a JSON summary as the last line"),
    wait_for_votes: bool = typer.Option(False, "--wait-for-votes",
                                        help="start labelling only once every pair has its judge votes (the "
                                             "order before streaming runs; times the judges)"),
    compare: bool = typer.Option(True, "--compare/--no-compare",
                                 help="also decide the same comparison side by side, labels only and with the "
                                      "judge verdicts recorded in the data (recorded:NAME); off with --human"),
) -> None:
    from rich.console import Console

    from tiebreak.services.commands._client import EXIT_BAD_INPUT, EXIT_ERROR, ApiError, decision_exit_code
    from tiebreak.services.demo import DATASETS, demo_items, run_demo

    def fail(msg: str, code: int) -> None:
        typer.echo(f"error: {msg}", err=True)
        raise typer.Exit(code)

    names = [] if judges.strip().lower() in ("none", "") else [j.strip() for j in judges.split(",") if j.strip()]
    if pipeline not in ("ray", "local"):
        fail(f"--pipeline must be ray or local (got {pipeline!r})", EXIT_BAD_INPUT)
    if data not in DATASETS:
        fail(f"--data must be one of {', '.join(DATASETS)} (got {data!r})", EXIT_BAD_INPUT)
    available = len(demo_items(data))
    if pairs is not None and not 1 <= pairs <= available:
        fail(f"--pairs must be between 1 and {available} for --data {data} (got {pairs})", EXIT_BAD_INPUT)
    from tiebreak.services.pipeline import validate_judge_spec

    for n in names:
        err = validate_judge_spec(n)
        if err:
            fail(f"--judges {n!r}: {err}", EXIT_BAD_INPUT)
    if not 0 < alpha < 1 or not 0 <= margin < 0.5:
        fail("--alpha must lie in (0, 1) and --margin in [0, 0.5)", EXIT_BAD_INPUT)
    ddir = data_dir or Path("~/.cache/tiebreak/demo").expanduser()
    console = Console(stderr=json_out)
    try:
        res = run_demo(n_pairs=pairs, data=data, judges=names, alpha=alpha, margin=margin, budget=budget, seed=seed,
                       human=human, data_dir=ddir, out=out, port=port, label_delay=label_delay, pipeline=pipeline,
                       console=console, compare=compare, wait_for_votes=wait_for_votes)
    except ApiError as e:
        fail(e.msg, e.exit_code)
        return
    except KeyboardInterrupt:
        fail("interrupted", EXIT_ERROR)
        return
    except Exception as e:  # noqa: BLE001 - one line, exit 1
        fail(f"{type(e).__name__}: {e}", EXIT_ERROR)
        return
    lo, hi = res.interval
    judged = f", judging {res.judging_seconds:.0f} s" if res.judging_seconds is not None else ""
    first = f", first label at {res.first_label_s:.0f} s" if res.first_label_s is not None else ""
    console.print(f"\n[bold]{res.decision.upper()}[/bold] after {res.labels} human labels on {res.n_pairs} pairs: "
                  f"estimate {res.estimate:.3f}, {100 * (1 - alpha):g}% interval ({lo:.3f}, {hi:.3f}) "
                  f"(recorded crowd θ on this pool: {res.truth:.3f}); {res.seconds:.0f} s in all{first}{judged}.")
    if len(res.comparison) > 1:
        from tiebreak.services.demo import worth_line

        console.print("side by side (same pairs, same crowd answers, same α):")
        for r in res.comparison:
            lo, hi = r["interval"]
            console.print(f"  {r['title']:<26} judges {r['judges']:<52} {r['labels']:>4} labels → "
                          f"{r['decision']} ({lo:.3f}, {hi:.3f})", soft_wrap=True, highlight=False)
        if res.recorded_note:
            console.print(f"[dim]{res.recorded_note}.[/dim]", soft_wrap=True)
        worth = worth_line(res.comparison)
        if worth:
            console.print(worth, soft_wrap=True)
    console.print(f"report: {res.report_path}")
    for key, path in res.reports.items():
        if path != res.report_path:
            console.print(f"report ({key}): {path}", soft_wrap=True)
    if json_out:
        typer.echo(json.dumps({"run_id": res.run_id, "decision": res.decision, "labels": res.labels,
                               "estimate": res.estimate, "interval": res.interval, "n_pairs": res.n_pairs,
                               "truth": res.truth, "seconds": round(res.seconds, 1), "data": res.data,
                               "first_label_s": None if res.first_label_s is None else round(res.first_label_s, 1),
                               "judging_seconds": res.judging_seconds, "report": str(res.report_path),
                               "votes": res.status.get("votes"), "comparison": res.comparison,
                               "reports": {k: str(v) for k, v in res.reports.items()}}))
    raise typer.Exit(decision_exit_code(res.decision))
