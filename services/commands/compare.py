"""`tiebreak compare` — base and tuned model + prompts → generate, judge, label, decide (or start from pairs)."""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import typer

from tiebreak.judges.defaults import DEFAULT_JURY
from tiebreak.judges.spec import SpecError, check_judge, parse_model
from tiebreak.services.errors import BadInput

HELP = ("Is the tuned model better than the base on your prompts? Generates both models' answers, has the judges "
        "vote on every pair, asks for human labels on actively chosen pairs and stops at the decision.")
EPILOG = (
    "MODEL: a preset (qwen2.5-coder-0.5b, qwen2.5-coder-1.5b, gemma-3-270m-base), a .gguf path, "
    "openai:MODEL@BASE_URL, vllm:MODEL[+LORA_DIR] or a JSON spec. PROMPTS: .txt (one per line), .jsonl / .json "
    "({id, text}). PAIRS: .jsonl with {id, prompt, base, tuned[, human_votes]} or the shared/data schema "
    "(response_a = base, response_b = tuned).\n\n"
    "Examples:  tiebreak compare --base gemma-3-270m-base --tuned ./my-finetune.gguf --prompts prompts.txt  |  "
    "tiebreak compare --base openai:base@http://gpu:8001/v1 --tuned openai:tuned@http://gpu:8001/v1 "
    "--prompts eval.jsonl --judges qwen2.5-coder-1.5b:pointwise --label browser --server http://tiebreak:8000  |  "
    "tiebreak compare --pairs outputs.jsonl --judges none --label votes --budget 100.\n\n"
    "Exit codes: 0 decided (better/worse/equivalent), 1 error, 2 bad input, 3 undecided at budget."
)

LABEL_MODES = ("terminal", "browser", "votes", "none")


def _read_jsonl_or_json(path: Path) -> list[Any]:
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise BadInput(f"{path}: not valid JSON ({e.msg})") from None
        if not isinstance(data, list):
            raise BadInput(f"{path}: expected a JSON list")
        return data
    from tiebreak.services.data import jsonl_rows

    return [row for _, row in jsonl_rows(path, BadInput)]


def load_prompts(path: Path) -> list[dict]:
    if not path.exists():
        raise BadInput(f"{path}: no such file")
    prompts: list[dict[str, Any]]   # {"id", "text"[, "slices": list of tags]}
    if path.suffix in (".jsonl", ".json"):
        prompts = []
        for k, row in enumerate(_read_jsonl_or_json(path), 1):
            if isinstance(row, str):
                row = {"text": row}
            text = row.get("text") or row.get("prompt") or row.get("question") if isinstance(row, dict) else None
            if not text:
                raise BadInput(f"{path}: item {k} has no 'text' (or 'prompt' / 'question')")
            prompts.append({"id": str(row.get("id", k)), "text": str(text)})
            if isinstance(row, dict) and (tags := _slices_field(row, f"{path}: item {k}")):
                prompts[-1]["slices"] = tags
    else:
        prompts = [{"id": str(k), "text": line.strip()}
                   for k, line in enumerate(path.read_text().splitlines(), 1) if line.strip()]
    if not prompts:
        raise BadInput(f"{path}: no prompts")
    if len({p["id"] for p in prompts}) != len(prompts):
        raise BadInput(f"{path}: prompt ids must be unique")
    return prompts


def _slices_field(row: dict, where: str) -> list[str] | None:
    """An item's optional `slices`: a string or a list of non-empty strings (tags of its prompt)."""
    tags = row.get("slices")
    if tags is None:
        return None
    if isinstance(tags, str):
        tags = [tags]
    if not isinstance(tags, list) or not all(isinstance(t, str) and t.strip() for t in tags):
        raise BadInput(f"{where}: slices must be a list of non-empty strings, e.g. [\"edge-case\"] (got {tags!r})")
    return list(dict.fromkeys(tags))


_VOTE = {"A": "base", "B": "tuned", "tie": "tie", "base": "base", "tuned": "tuned"}


def load_pairs(path: Path) -> list[dict]:
    """Pairs with outputs: {id, prompt, base, tuned[, judge_votes][, human_votes]} or the shared/data schema."""
    if not path.exists():
        raise BadInput(f"{path}: no such file")
    out = []
    for k, row in enumerate(_read_jsonl_or_json(path), 1):
        if not isinstance(row, dict):
            raise BadInput(f"{path}: item {k} is not an object")
        p: dict[str, Any]   # the four texts, then optional judge_votes, slices (list), human_votes (list)
        if "base" in row and "tuned" in row:
            p = {"id": str(row.get("id", k)), "prompt": str(row.get("prompt") or row.get("question") or ""),
                 "base": str(row["base"]), "tuned": str(row["tuned"])}
        elif "response_a" in row and "response_b" in row:
            p = {"id": str(row.get("id", k)), "prompt": str(row.get("question") or ""),
                 "base": str(row["response_a"] or ""), "tuned": str(row["response_b"] or "")}
        else:
            raise BadInput(f"{path}: item {k} needs base/tuned (or response_a/response_b)")
        if row.get("judge_votes") is not None:
            p["judge_votes"] = row["judge_votes"]
        if tags := _slices_field(row, f"{path}: item {k}"):
            p["slices"] = tags
        votes = row.get("human_votes")
        if votes:
            bad = [v for v in votes if v not in _VOTE]
            if bad:
                raise BadInput(f"{path}: item {k}: human_votes must be A/B/tie or base/tuned/tie (got {bad[0]!r})")
            p["human_votes"] = [_VOTE[v] for v in votes]
        out.append(p)
    if not out:
        raise BadInput(f"{path}: no pairs")
    if len({p["id"] for p in out}) != len(out):
        raise BadInput(f"{path}: pair ids must be unique")
    return out


def _terminal_labeller(client: Any, run_id: str, token: str, annotator: str, stop: threading.Event) -> None:
    """Ask the user in this terminal, one blind pair at a time."""
    from rich.console import Console
    from rich.panel import Panel

    con = Console()
    told = False
    while not stop.is_set():
        pair = client.next_pair(run_id, annotator, token=token)
        if pair is None:
            st = client.status(run_id)
            if st["decision"] != "running" or st["status"] == "failed":
                return
            if st["status"] == "generating" and not told:   # a generate run: the drawn pair is being made
                con.print(f"[dim]the next pair is being generated ({st['generated']}/{st['n_pairs']} pairs "
                          "ready so far)…[/dim]")
                told = True
            time.sleep(0.5)
            continue
        told = False
        con.rule(f"pair {pair['pair_id']}")
        con.print(Panel(pair["prompt"], title="prompt"))
        con.print(Panel(pair["left"], title="[1] left"))
        con.print(Panel(pair["right"], title="[2] right"))
        while True:
            ans = input("better answer? 1 = left, 2 = right, 0 = tie, q = stop labelling: ").strip().lower()
            if ans in ("1", "2", "0", "q"):
                break
        if ans == "q":
            return
        verdict = {"1": "left", "2": "right", "0": "tie"}[ans]
        r = client.label(run_id, {"lease_id": pair["lease_id"], "pair_id": pair["pair_id"], "verdict": verdict},
                         token=token)
        lo, hi = client.status(run_id)["interval"]
        con.print(f"[dim]labels {r['labels']}, interval ({lo:.3f}, {hi:.3f}), decision {r['decision']}[/dim]")


def compare(
    base: str | None = typer.Option(None, "--base", help="base MODEL (see below)"),
    tuned: str | None = typer.Option(None, "--tuned", help="fine-tuned MODEL"),
    prompts: Path | None = typer.Option(None, "--prompts", help="prompts file (.txt / .jsonl / .json)"),
    pairs: Path | None = typer.Option(None, "--pairs", help="pre-generated pairs instead of --base/--tuned/--prompts"),
    judges: str = typer.Option(",".join(DEFAULT_JURY), "--judges",
                               help="comma-separated judges (preset[:pairwise|pointwise|rubric], .gguf, feature:NAME); 'none' = labels "
                                    "only"),
    criteria: str | None = typer.Option(None, "--criteria",
                                        help="extra per-criterion verdicts, e.g. accuracy,tone (alpha is split)"),
    slices_of_interest: str | None = typer.Option(
        None, "--slices-of-interest",
        help="comma-separated slices (tags in the items' `slices` field) that get their own verdict; default: "
             "every slice present (alpha is split)"),
    alpha: float = typer.Option(0.05, "--alpha", help="bound on the probability of a wrong verdict"),
    margin: float = typer.Option(0.0, "--margin", help="equivalence margin around 1/2 (0 = no equivalence stop)"),
    budget: int | None = typer.Option(None, "--budget", help="human labels at most; undecided (exit 3) after"),
    label: str | None = typer.Option(None, "--label",
                                     help="terminal (ask here; default on a TTY) | browser (print the annotation "
                                          "page) | votes (simulate from the pairs file's human_votes) | none "
                                          "(create the run, print its id, exit)"),
    name: str | None = typer.Option(None, "--name", help="run name (default from the models / file)"),
    max_tokens: int = typer.Option(256, "--max-tokens", help="generation length per answer"),
    server: str | None = typer.Option(None, "--server", envvar=["TIEBREAK_URL", "TIEBREAK_SERVER"],
                                      help="a running service; default: start one here (embedded Redis, local Ray)"),
    token: str | None = typer.Option(None, "--token", envvar=["TIEBREAK_ADMIN_TOKEN", "TIEBREAK_TOKEN"], help="admin token (--server)"),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="embedded Redis directory (no --server)"),
    pipeline: str = typer.Option("ray", "--pipeline", help="embedded service: ray | local (in-process judges)"),
    seed: int | None = typer.Option(None, "--seed", help="seed of the run's sampler (and of --label votes)"),
    out: Path | None = typer.Option(None, "--out", "-o", help="report file (default tiebreak-report-RUN_ID.html)"),
    timeout: float = typer.Option(24 * 3600.0, "--timeout", help="give up (exit 1) after this many seconds"),
    json_out: bool = typer.Option(False, "--json", help="print a JSON summary as the last line"),
) -> None:
    from tiebreak.services.commands._client import (
        EXIT_BAD_INPUT,
        EXIT_ERROR,
        EXIT_OK,
        EXIT_UNDECIDED,
        ApiError,
        Client,
        decision_exit_code,
    )

    def fail(msg: str, code: int = EXIT_BAD_INPUT) -> None:
        typer.echo(f"error: {msg}", err=True)
        raise typer.Exit(code)

    # ----------------------------------------------------------------- validate everything before starting
    try:
        if pairs is not None and any(x is not None for x in (base, tuned, prompts)):
            raise BadInput("give either --pairs, or --base, --tuned and --prompts")
        if pairs is None and not (base and tuned and prompts):
            raise BadInput("give --base MODEL --tuned MODEL --prompts FILE (or --pairs FILE)")
        mode = label or ("terminal" if sys.stdin.isatty() else "browser")
        if mode not in LABEL_MODES:
            raise BadInput(f"--label must be one of {', '.join(LABEL_MODES)} (got {mode!r})")
        if pipeline not in ("ray", "local"):
            raise BadInput(f"--pipeline must be ray or local (got {pipeline!r})")
        judge_list = [] if judges.strip().lower() in ("none", "") else \
            [j.strip() for j in judges.split(",") if j.strip()]
        for j in judge_list:
            check_judge(f"--judges {j!r}", j)
        body: dict[str, Any] = {"alpha": alpha, "margin": margin, "budget": budget, "judges": judge_list}
        if criteria:
            body["criteria"] = [c.strip() for c in criteria.split(",") if c.strip()]
        if seed is not None:
            body["seed"] = seed
        if slices_of_interest:
            body["slices_of_interest"] = [s.strip() for s in slices_of_interest.split(",") if s.strip()]
        items: dict[str, dict] = {}
        if pairs is not None:
            pl = load_pairs(pairs)
            if mode == "votes" and not all(p.get("human_votes") for p in pl):
                raise BadInput("--label votes needs human_votes on every pair of the --pairs file")
            items = {p["id"]: p for p in pl}
            body["name"] = name or pairs.stem
            body["pairs"] = [{k: v for k, v in p.items() if k != "human_votes"} for p in pl]
            if any("judge_votes" in p for p in pl):
                body["judges"] = []   # votes supplied in the file
        else:
            assert base and tuned and prompts
            if mode == "votes":
                raise BadInput("--label votes needs --pairs with recorded human_votes")
            bspec, tspec = parse_model(base, "--base"), parse_model(tuned, "--tuned")
            pr = load_prompts(prompts)
            body["name"] = name or f"{tuned} vs {base}"
            body["generate"] = {"base": bspec, "tuned": tspec, "prompts": pr, "max_tokens": max_tokens}
        if not 0 < alpha < 1 or not 0 <= margin < 0.5 or (budget is not None and budget < 1):
            raise BadInput("--alpha must lie in (0, 1), --margin in [0, 0.5), --budget >= 1")
    except (BadInput, SpecError, OSError) as e:
        fail(str(e))
        return

    # ----------------------------------------------------------------------------------------- run it
    from rich.console import Console

    from tiebreak.services.commands.progress import ProgressLine

    console = Console(stderr=True)
    svc = None
    if server is None:
        from tiebreak.services.demo import EmbeddedService

        ddir = data_dir or Path("~/.local/share/tiebreak").expanduser()
        svc = EmbeddedService(ddir, pipeline=pipeline)
        try:
            svc.start()
        except Exception as e:  # noqa: BLE001
            fail(f"cannot start the embedded service: {type(e).__name__}: {e}", EXIT_ERROR)
        client = Client(svc.url, svc.token)
    else:
        client = Client(server, token)
    code = EXIT_ERROR
    try:
        run_id = client.create_run(body)
        console.print(f"run {run_id} created on {client.server}")
        if mode == "none":
            if svc is not None:
                # this process hosts the service: finish generation and judging before it goes away
                deadline = time.time() + timeout
                shown = ProgressLine()
                while (st := client.status(run_id))["status"] in ("generating", "judging"):
                    if (line := shown.line(st, time.monotonic())) is not None:
                        console.print(line, soft_wrap=True)
                    if time.time() > deadline:
                        raise ApiError(f"generation/judging not finished after {timeout:.0f} s", EXIT_ERROR)
                    time.sleep(0.5)
                if st["status"] == "failed":
                    raise ApiError(f"run failed: {st.get('error')}", EXIT_ERROR)
                console.print(f"ready for labels: tiebreak serve --data-dir {svc.data_dir}, then open "
                              f"/annotate?run={run_id}#token=TOKEN (POST /v1/annotators)", soft_wrap=True)
            typer.echo(run_id)
            code = EXIT_OK
            return
        ann_name = f"cli-{run_id[:8]}"     # annotator names are unique per server (one name, one person)
        ann_token = client.create_annotator(ann_name, [run_id])
        stop = threading.Event()
        worker: threading.Thread | None = None
        annot = None
        if mode == "browser":
            console.print(f"label at: {client.server}/annotate?run={run_id}#token={ann_token}")
            if svc is not None:
                console.print("[dim](this process hosts the service: keep it running until the decision)[/dim]")
        elif mode == "votes":
            from tiebreak.services.demo import SimulatedAnnotator

            annot = SimulatedAnnotator(client, run_id, ann_token, items, seed=seed or 0, name=ann_name)
            worker = threading.Thread(target=annot.run, daemon=True)
        else:
            worker = threading.Thread(target=_terminal_labeller, args=(client, run_id, ann_token, ann_name, stop),
                                      daemon=True)
        deadline = time.time() + timeout
        shown = ProgressLine()
        while True:
            st = client.status(run_id)
            if st["status"] == "failed":
                raise ApiError(f"run failed: {st.get('error')}", EXIT_ERROR)
            # pairs are labellable while outputs are generated and judges vote (a streaming run): start at once
            if worker is not None and not worker.is_alive() and st["status"] in ("ready", "judging", "generating") \
                    and worker.ident is None:
                worker.start()
            if annot is not None and annot.error:
                raise ApiError(f"annotator: {annot.error}", EXIT_ERROR)
            # one line per change, and one at least every 10 s while outputs are made or judges vote (with
            # an ETA from the measured rate); the terminal labeller owns the screen, so it gets none
            if mode != "terminal" and (line := shown.line(st, time.monotonic())) is not None:
                console.print(line, soft_wrap=True)
            if st["decision"] != "running" and (not st.get("slices") or st.get("finished")):
                break  # the overall verdict, and with slices every slice verdict, is final
            if mode == "terminal" and worker is not None and worker.ident is not None and not worker.is_alive():
                break  # the user stopped labelling
            if time.time() > deadline:
                raise ApiError(f"no decision after {timeout:.0f} s", EXIT_ERROR)
            time.sleep(0.5)
        stop.set()
        if annot is not None:
            annot.stop.set()
        path = out or Path(f"tiebreak-report-{run_id}.html")
        path.write_text(client.report_html(run_id))
        lo, hi = st["interval"]
        console.print(f"{st['decision'].upper()} after {st['labels']} labels: estimate {st.get('estimate')}, "
                      f"interval ({lo:.3f}, {hi:.3f})")
        for sname, sv in (st.get("slices") or {}).items():
            slo, shi = sv["interval"]
            console.print(f"  slice {sname}: {sv['decision']} ({sv['n_pairs']} pairs, {sv['labels']} labelled), "
                          f"estimate {sv['estimate']:.3f}, interval ({slo:.3f}, {shi:.3f})")
        for w in st.get("slice_warnings") or []:
            console.print(f"  [yellow]warning:[/yellow] {w}")
        console.print(f"report: {path.resolve()}")
        if json_out:
            summary = {"run_id": run_id, "decision": st["decision"], "labels": st["labels"],
                       "estimate": st.get("estimate"), "interval": st["interval"], "report": str(path.resolve())}
            if st.get("slices"):
                summary["slices"] = st["slices"]
                summary["alpha_split"] = st.get("alpha_split")
            typer.echo(json.dumps(summary))
        code = decision_exit_code(st["decision"])
        if st["decision"] == "running":   # the user stopped labelling first: no decision, like a spent budget
            console.print("stopped before a decision: the interval above still holds")
            code = EXIT_UNDECIDED
    except ApiError as e:
        typer.echo(f"error: {e.msg}", err=True)
        code = e.exit_code
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        code = EXIT_ERROR
    finally:
        client.close()
        if svc is not None:
            svc.stop()
    raise typer.Exit(code)
