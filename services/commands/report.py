"""`tiebreak report RUN_ID` — fetch a run's self-contained HTML report from the service and write it.
`tiebreak report --experiment EXP` — the same for an experiment (every checkpoint), plus each run's report next
to it so that the page's links work offline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

HELP = ("Write the self-contained HTML report of a run (GET /v1/runs/{id}/report) or, with --experiment, of an "
        "experiment (GET /v1/experiments/{exp}/report, plus its runs' reports beside it) and print its path.")
EPILOG = ("Examples:  tiebreak report 3f2a9c1b7d6e4f00  |  tiebreak report RUN_ID --server http://tiebreak:8000 "
          "-o report.html --open  |  tiebreak report --experiment exp_0123abcd -o reports/exp.html.  "
          "Exit codes: 0 written, 1 error (server unreachable), 2 bad input (unknown run or experiment, token "
          "rejected); with --exit-code: 0 decided, 3 undecided, 1 still running.")


def write_experiment_report(client: Any, experiment: str, path: Path) -> Path:
    """Write the experiment's page to ``path`` and every run's report beside it, where the page's links
    (``links=files``) point. ``client``: services.commands._client.Client (raises its ApiError)."""
    from tiebreak.services.experiment_report import file_run_href

    html = client.get(f"/v1/experiments/{experiment}/report", params={"links": "files"}).text
    rec = client.get(f"/v1/experiments/{experiment}").json()
    pages = {r["run_id"]: client.report_html(r["run_id"])
             for ck in rec.get("checkpoints", []) for r in ck.get("runs", {}).values()}
    path.parent.mkdir(parents=True, exist_ok=True)
    for rid, page in pages.items():
        (path.parent / file_run_href(rid)).write_text(page)
    path.write_text(html)
    return path


def report(
    run_id: str | None = typer.Argument(None, help="the run id (from POST /v1/runs or `tiebreak compare`)"),
    experiment: str | None = typer.Option(None, "--experiment", help="an experiment id instead of a run: its "
                                          "report, with every run's report written beside it"),
    server: str | None = typer.Option(None, "--server", envvar=["TIEBREAK_URL", "TIEBREAK_SERVER"],
                                      help="service URL (default http://127.0.0.1:8000)"),
    token: str | None = typer.Option(None, "--token", envvar=["TIEBREAK_ADMIN_TOKEN", "TIEBREAK_TOKEN"], help="admin token"),
    out: Path | None = typer.Option(None, "--out", "-o", help="file to write (default tiebreak-report-RUN_ID.html "
                                    "or tiebreak-experiment-EXP.html)"),
    open_: bool = typer.Option(False, "--open", help="open the report in a browser"),
    exit_code: bool = typer.Option(False, "--exit-code", help="exit with the run's decision code (0/3/1)"),
) -> None:
    from tiebreak.services.commands._client import ApiError, Client, decision_exit_code

    if (run_id is None) == (experiment is None):
        typer.echo("error: give a RUN_ID or --experiment EXP (exactly one)", err=True)
        raise typer.Exit(2)
    if experiment is not None and exit_code:
        typer.echo("error: --exit-code applies to a run's decision, not to --experiment", err=True)
        raise typer.Exit(2)
    client = Client(server, token)
    decision = None
    path = out or Path(f"tiebreak-experiment-{experiment}.html" if experiment else f"tiebreak-report-{run_id}.html")
    try:
        if experiment is not None:
            write_experiment_report(client, experiment, path)
        else:
            assert run_id is not None
            html = client.report_html(run_id)
            decision = client.status(run_id)["decision"] if exit_code else None
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(html)
    except ApiError as e:
        typer.echo(f"error: {e.msg}", err=True)
        raise typer.Exit(e.exit_code) from None
    finally:
        client.close()
    typer.echo(str(path.resolve()))
    if open_:
        import webbrowser

        webbrowser.open(path.resolve().as_uri())
    if decision is not None:
        raise typer.Exit(decision_exit_code(decision))
