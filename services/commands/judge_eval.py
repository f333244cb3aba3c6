# ruff: noqa: B008  (typer options as defaults are the typer idiom)
"""`tiebreak judge-eval PATH.jsonl [--judges NAMES] [--limit N] [--json]` — judge agreement with humans."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from tiebreak.judges.defaults import DEFAULT_JURY

# Works after `make setup` alone (the 1.5B preset comes only with `make setup-large`).
DEFAULT_JUDGES = ",".join(DEFAULT_JURY)


def _fmt(x) -> str:
    if x is None:
        return "—"
    if isinstance(x, float):
        return f"{x:.3f}"
    return str(x)


def judge_eval(
    path: Path = typer.Argument(..., help="JSONL in the schema of shared/data (question, response_a/b, human_label)"),
    judges: str = typer.Option(DEFAULT_JUDGES, "--judges",
                               help="comma-separated MODEL[:pairwise|pointwise] (MODEL = preset or .gguf path), "
                                    "feature:NAME or 'features' (free text-feature jurors), recorded:NAME (verdicts "
                                    "already in the file, e.g. recorded:gpt-4)"),
    limit: int | None = typer.Option(None, "--limit", help="evaluate a seeded random sample of N pairs"),
    json_out: bool = typer.Option(False, "--json", help="print one JSON object as the last line"),
    seed: int = typer.Option(0, "--seed", help="seed of the --limit sample and of the cross-fitting folds"),
    balanced: bool = typer.Option(False, "--balanced", help="decisive items only, as many human A as B"),
    folds: int = typer.Option(5, "--folds", help="folds of the cross-fitted calibration"),
    penalty: float = typer.Option(1.0, "--calibration-penalty",
                                  help="ridge penalty of the calibration (the sampler's run default is 20)"),
    max_chars: int = typer.Option(1500, "--max-chars",
                                  help="characters of each response (and of the question) a model judge reads; "
                                       "longer ones are cut and marked '…[truncated]'"),
    injection_limit: int = typer.Option(20, "--injection-limit", help="pairs used for the injection flip rate"),
    injection: str = typer.Option("ignore", "--injection",
                                  help="the payload of the flip-rate measurement: ignore, evaluator, system or "
                                       "appeal (judges/injection.py INJECTIONS)"),
    instruction_first: bool = typer.Option(False, "--instruction-first/--instruction-last",
                                           help="pointwise judges: ask the yes/no question before the response "
                                                "(shared prefix for both responses) or after it"),
    cache: Path | None = typer.Option(None, "--cache", help="sqlite vote cache (default ~/.cache/tiebreak/votes.sqlite)"),
    no_cache: bool = typer.Option(False, "--no-cache", help="do not read or write the vote cache"),
    workers: int = typer.Option(1, "--workers",
                                help="model jurors vote in this many processes first (one model copy and "
                                     "cores/N llama.cpp threads each, pairs dealt round robin); 1: in this process"),
) -> None:
    """Per judge and for the jury: decisive / 3-way agreement with human_label, the same after the sampler's
    calibration (cross-fitted), explained label variance, swap consistency, P(pick A), seconds and
    CPU-seconds per pair, explained variance per CPU-second, injection flip rate."""
    from tiebreak.judges.cache import SqliteVoteCache
    from tiebreak.judges.evaluate import evaluate, load_items
    from tiebreak.judges.jury import judges_from_names

    def fail(msg: str) -> None:
        typer.echo(f"error: {msg}", err=True)
        raise typer.Exit(2)

    if limit is not None and limit < 1:
        fail(f"--limit must be ≥ 1, got {limit}")
    if max_chars < 50:
        fail(f"--max-chars must be ≥ 50, got {max_chars}")
    if folds < 2:
        fail(f"--folds must be ≥ 2, got {folds}")
    if workers < 1:
        fail(f"--workers must be ≥ 1, got {workers}")
    if penalty <= 0:
        fail(f"--calibration-penalty must be > 0, got {penalty}")
    from tiebreak.judges.injection import INJECTIONS

    if injection not in INJECTIONS:
        fail(f"--injection {injection!r} is invalid; valid choices: {', '.join(INJECTIONS)}")
    names = [n.strip() for n in judges.split(",") if n.strip()]
    if not names:
        fail("--judges is empty; give e.g. qwen2.5-coder-0.5b:pointwise,features")
    try:
        items = load_items(path, limit, seed, balanced=balanced)
        jury = judges_from_names(names, max_chars=max_chars, instruction_first=instruction_first)
    except (ValueError, RuntimeError) as e:
        fail(str(e))
        return
    vc = None
    tmp = None
    if not no_cache:
        from tiebreak.services.settings import ClientSettings

        default = Path(ClientSettings().vote_cache).expanduser()
        vc = SqliteVoteCache(cache or default)
    elif workers > 1:   # the workers hand their votes over through a cache of this run only
        import tempfile

        tmp = tempfile.TemporaryDirectory(prefix="tiebreak-votes-")
        vc = SqliteVoteCache(Path(tmp.name) / "votes.sqlite")
    pre = None
    if workers > 1 and vc is not None:
        from tiebreak.judges.evaluate import prevote

        pre = prevote(items, names, vc.path, workers, {"max_chars": max_chars, "instruction_first": instruction_first},
                      injection_limit, injection)
    res = evaluate(items, jury, cache=vc, injection_limit=injection_limit, progress=not json_out, folds=folds,
                   seed=seed, penalty=penalty, injection=injection)
    res["path"] = str(path)
    if pre is not None:
        # with workers the model time is theirs: wall = the parallel phase, CPU = all workers' CPU per pair
        res["workers"] = pre
        res["workers"]["wall_seconds_per_pair"] = pre["wall_seconds"] / max(1, len(items))
        res["workers"]["cpu_seconds_per_pair"] = pre["cpu_seconds"] / max(1, len(items))
    if tmp is not None:
        tmp.cleanup()
    cols = ["decisive_agreement", "decisive_agreement_calibrated", "explained_variance", "three_way_agreement",
            "swap_consistency", "p_pick_a", "seconds_per_pair", "cpu_seconds_per_pair",
            "explained_variance_per_cpu_second", "injection_flip_rate", "n_decisive"]
    if not json_out:
        from rich.console import Console
        from rich.table import Table

        t = Table(title=f"judge-eval {path.name} ({res['items']} pairs)")
        t.add_column("judge")
        for c in cols:
            t.add_column(c.replace("_", " "))
        for n, m in [*res["judges"].items(), ("jury", res["ensemble"])]:
            t.add_row(n, *[_fmt(m.get(c)) for c in cols])
        con = Console(width=240)
        con.print(t)
        cal = res["calibration"]
        con.print(f"calibrated = {cal['folds']}-fold cross-fitted {cal['family']}, penalty {cal['penalty']}; "
                  f"jury calibrated injection flip rate {_fmt(res['ensemble'].get('injection_flip_rate_calibrated'))}; "
                  f"'longer wins' {_fmt(res['baselines']['longer_wins_decisive_agreement'])}; injection "
                  f"{res['injection']!r}")
        cut = {n: m["truncated_responses"] for n, m in res["judges"].items() if m.get("truncated_responses")}
        if cut:
            con.print(f"responses cut at {max_chars} characters (marked '…[truncated]' in the judge's prompt): "
                      + ", ".join(f"{n} {k} of {2 * res['items']}" for n, k in cut.items()))
        if pre is not None:
            con.print(f"{workers} worker processes × {pre['threads_per_worker']} thread(s): "
                      f"{res['workers']['wall_seconds_per_pair']:.2f} s/pair wall, "
                      f"{res['workers']['cpu_seconds_per_pair']:.2f} CPU-s/pair (votes, injection included)")
        fp = res["baselines"]["responses_with_judge_directed_text"]
        if fp:
            con.print(f"{fp} response(s) had sentences addressed to the judge, removed before judging "
                      "(judges/injection.py)")
    else:
        typer.echo(json.dumps(res))
