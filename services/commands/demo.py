"""`tiebreak demo` — the main job (`make run`): service + embedded Redis + local Ray + live local judges +
a simulated annotator answering from recorded crowd votes, live view, HTML report."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from tiebreak.judges.defaults import DEFAULT_JURY

HELP = ("The whole system end to end on real recorded pairs (Vicuna-80: GPT-4 vs Guanaco-7B): local judges vote "
        "live, a simulated annotator answers from the recorded crowd votes (--human: you label in the browser), "
        "the run stops at the decision and writes the HTML report.")
EPILOG = ("Examples:  tiebreak demo  |  tiebreak demo --human  |  tiebreak demo --pairs 80 --judges "
          "qwen2.5-coder-1.5b:pointwise  |  tiebreak demo --judges none --pairs 20 --json.  "
          "Exit codes: 0 decided, 1 error, 2 bad input, 3 undecided at budget.")


def demo(
    pairs: int = typer.Option(32, "--pairs", help="pool size: N of the 80 Vicuna questions, evenly spread"),
    judges: str = typer.Option(",".join(DEFAULT_JURY), "--judges",
                               help="comma-separated judges (preset[:pairwise|pointwise|rubric], .gguf path or feature:NAME); "
                                    "'none' = labels only"),
    human: bool = typer.Option(False, "--human", help="open the annotation page and wait for your labels"),
    alpha: float = typer.Option(0.05, "--alpha", help="bound on the probability of a wrong verdict"),
    margin: float = typer.Option(0.05, "--margin", help="equivalence margin around 1/2"),
    budget: int | None = typer.Option(None, "--budget", help="human labels at most (undecided after)"),
    seed: int = typer.Option(0, "--seed", help="seed of the run and of the simulated annotator"),
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
                                 help="also decide the same comparison side by side, labels only and with GPT-4's "
                                      "verdicts recorded in the data (recorded:gpt-4); off with --human"),
) -> None:
    from rich.console import Console

    from tiebreak.services.commands._client import EXIT_BAD_INPUT, EXIT_ERROR, ApiError, decision_exit_code
    from tiebreak.services.demo import run_demo

    def fail(msg: str, code: int) -> None:
        typer.echo(f"error: {msg}", err=True)
        raise typer.Exit(code)

    names = [] if judges.strip().lower() in ("none", "") else [j.strip() for j in judges.split(",") if j.strip()]
    if pipeline not in ("ray", "local"):
        fail(f"--pipeline must be ray or local (got {pipeline!r})", EXIT_BAD_INPUT)
    if not 1 <= pairs <= 80:
        fail(f"--pairs must be between 1 and 80 (got {pairs})", EXIT_BAD_INPUT)
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
        res = run_demo(n_pairs=pairs, judges=names, alpha=alpha, margin=margin, budget=budget, seed=seed,
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
    console.print(f"\n[bold]{res.decision.upper()}[/bold] after {res.labels} human labels on {res.n_pairs} pairs: "
                  f"estimate {res.estimate:.3f}, {100 * (1 - alpha):g}% interval ({lo:.3f}, {hi:.3f}) "
                  f"(recorded crowd θ on this pool: {res.truth:.3f}); {res.seconds:.0f} s in all{judged}.")
    if len(res.comparison) > 1:
        from tiebreak.services.demo import RECORDED_NOTE, worth_line

        console.print("side by side (same pairs, same crowd answers, same α):")
        for r in res.comparison:
            lo, hi = r["interval"]
            console.print(f"  {r['title']:<26} judges {r['judges']:<52} {r['labels']:>3} labels → "
                          f"{r['decision']} ({lo:.3f}, {hi:.3f})", soft_wrap=True, highlight=False)
        if any(r["lane"] == "recorded" for r in res.comparison):
            console.print(f"[dim]{RECORDED_NOTE}.[/dim]", soft_wrap=True)
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
                               "truth": res.truth, "seconds": round(res.seconds, 1),
                               "judging_seconds": res.judging_seconds, "report": str(res.report_path),
                               "votes": res.status.get("votes"), "comparison": res.comparison,
                               "reports": {k: str(v) for k, v in res.reports.items()}}))
    raise typer.Exit(decision_exit_code(res.decision))
