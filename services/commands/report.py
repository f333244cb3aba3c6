"""`tiebreak report RUN_ID` — fetch a run's self-contained HTML report from the service and write it."""

from __future__ import annotations

from pathlib import Path

import typer

HELP = "Write the self-contained HTML report of a run (GET /v1/runs/{id}/report) and print its path."
EPILOG = ("Examples:  tiebreak report 3f2a9c1b7d6e4f00  |  tiebreak report RUN_ID --server http://tiebreak:8000 "
          "-o report.html --open.  Exit codes: 0 written, 1 error (server unreachable), 2 bad input (unknown run, "
          "token rejected); with --exit-code: 0 decided, 3 undecided, 1 still running.")


def report(
    run_id: str = typer.Argument(..., help="the run id (from POST /v1/runs or `tiebreak compare`)"),
    server: str | None = typer.Option(None, "--server", envvar=["TIEBREAK_URL", "TIEBREAK_SERVER"],
                                      help="service URL (default http://127.0.0.1:8000)"),
    token: str | None = typer.Option(None, "--token", envvar=["TIEBREAK_ADMIN_TOKEN", "TIEBREAK_TOKEN"], help="admin token"),
    out: Path | None = typer.Option(None, "--out", "-o", help="file to write (default tiebreak-report-RUN_ID.html)"),
    open_: bool = typer.Option(False, "--open", help="open the report in a browser"),
    exit_code: bool = typer.Option(False, "--exit-code", help="exit with the run's decision code (0/3/1)"),
) -> None:
    from services.commands._client import ApiError, Client, decision_exit_code

    client = Client(server, token)
    try:
        html = client.report_html(run_id)
        decision = client.status(run_id)["decision"] if exit_code else None
    except ApiError as e:
        typer.echo(f"error: {e.msg}", err=True)
        raise typer.Exit(e.exit_code) from None
    finally:
        client.close()
    path = out or Path(f"tiebreak-report-{run_id}.html")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(html)
    typer.echo(str(path.resolve()))
    if open_:
        import webbrowser

        webbrowser.open(path.resolve().as_uri())
    if decision is not None:
        raise typer.Exit(decision_exit_code(decision))
