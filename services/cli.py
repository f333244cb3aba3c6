"""`tiebreak` command line (typer). Each command lives in services/commands/<name>.py; this file wires them.

Exit codes (every command): 0 decided / success, 1 error, 2 bad input, 3 undecided at budget.
"""

from __future__ import annotations

import typer

app = typer.Typer(
    name="tiebreak",
    help="Is the fine-tuned model better than the base model? Local LLM judges + few human labels + "
    "anytime-valid confidence sequences.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

EXIT_OK, EXIT_ERROR, EXIT_BAD_INPUT, EXIT_UNDECIDED = 0, 1, 2, 3


def _register() -> None:
    # Imports are local to each command module so `tiebreak --help` stays fast (no Ray/xllamacpp import).
    from tiebreak.services.commands import replay

    app.command("replay", help=replay.HELP, epilog=replay.EPILOG)(replay.replay)
    from tiebreak.services.commands import judge_eval

    app.command("judge-eval")(judge_eval.judge_eval)
    from tiebreak.services.commands import serve

    app.command("serve")(serve.serve)
    from tiebreak.services.commands import watch

    app.command("watch", help=watch.__doc__.split("\n\n")[1])(watch.watch)
    from tiebreak.services.commands import compare, demo, report

    app.command("compare", help=compare.HELP, epilog=compare.EPILOG)(compare.compare)
    app.command("report", help=report.HELP, epilog=report.EPILOG)(report.report)
    app.command("demo", help=demo.HELP, epilog=demo.EPILOG)(demo.demo)


_register()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
