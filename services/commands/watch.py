"""`tiebreak watch DIR --experiment EXP [--server URL] [--token T] [--interval S] [--once]`

Watches a training output folder and submits every new checkpoint to an experiment
(``POST /v1/experiments/{exp}/checkpoints``): ``checkpoint-*`` folders (HF Trainer; a LoRA adapter folder is
submitted as base model + adapter) and ``*.gguf`` files, in step order, once each is complete (a folder with
``trainer_state.json``, which the HF Trainer writes last; otherwise a folder with a model file or a ``.gguf``
file whose size did not change between two scans). Checkpoints the
experiment already has are skipped, so restarting the watcher is safe. Prints one line per checkpoint decision
(``decision CHECKPOINT: ...`` once its verdict against the best so far is final), the stop signal whenever it
changes, and the path of the experiment report, which it rewrites (with every run's report beside it) whenever
a decision, the checkpoint set or the signal changes; exits 0 when the signal says stop (or after one scan with
``--once``).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import typer

from tiebreak.sampler.decision import FINAL_DECISIONS

MARKERS = ("config.json", "adapter_config.json", "trainer_state.json", "model.safetensors")


def _step(p: Path) -> tuple[int, str]:
    m = re.search(r"(\d+)(?!.*\d)", p.stem if p.is_file() else p.name)
    return (int(m.group(1)) if m else -1, p.name)


def _signature(p: Path) -> tuple[int, int]:
    if p.is_file():
        return (p.stat().st_size, 1)
    files = [f for f in p.rglob("*") if f.is_file()]
    return (sum(f.stat().st_size for f in files), len(files))


def find_checkpoints(root: Path, seen: dict[str, tuple[int, int]]) -> list[Path]:
    """Complete checkpoints under root, in step order. A ``checkpoint-*`` folder with ``trainer_state.json``
    (the HF Trainer writes it last) is complete; another folder with a model marker, or a ``.gguf`` file, is
    complete once its size is unchanged since the previous scan (``seen`` remembers sizes between scans)."""
    out = []
    for p in root.iterdir():
        if p.is_dir() and p.name.startswith("checkpoint-"):
            if (p / "trainer_state.json").exists():
                out.append(p)
                continue
            if not any((p / m).exists() for m in MARKERS):
                continue
        elif not (p.is_file() and p.suffix == ".gguf"):
            continue
        sig = _signature(p)
        if sig[0] > 0 and seen.get(str(p)) == sig:
            out.append(p)
        seen[str(p)] = sig
    return sorted(out, key=_step)


FINAL = FINAL_DECISIONS


def decision_line(row: dict) -> str:
    """One line for a checkpoint's verdict (a row of GET /v1/experiments/{exp}/signal)."""
    def cmp(c: dict) -> str:
        return f"θ̂ {c['estimate']:.3f} in ({c['lower']:.3f}, {c['upper']:.3f}), {c['labels']} labels"

    base, best = row["vs_base"], row.get("vs_best") or row["vs_base"]
    ref = "the base" if best.get("against", "base") == "base" else best["against"]
    line = f"decision {row['checkpoint']}: {row['decision']} vs {ref} ({cmp(best)})"
    if best is not base and best.get("run_id") != base.get("run_id"):
        line += f"; vs the base: {base['decision']} ({cmp(base)})"
    return line + f"; α {row['alpha']:.4g}"


def watch(
    directory: Path = typer.Argument(..., help="training output folder (holds checkpoint-* folders or .gguf files)"),
    experiment: str = typer.Option(..., "--experiment", help="experiment id (POST /v1/experiments returned it)"),
    server: str | None = typer.Option(None, "--server",
                                      help="tiebreak service URL (default: env TIEBREAK_URL or "
                                           "http://127.0.0.1:8000)"),
    token: str | None = typer.Option(None, "--token",
                                     help="a trainer token of this experiment (POST /v1/tokens) or the admin "
                                          "token (default: env TIEBREAK_TOKEN or TIEBREAK_ADMIN_TOKEN)"),
    interval: float = typer.Option(10.0, "--interval", help="seconds between scans"),
    once: bool = typer.Option(False, "--once", help="scan once, submit, print the signal and exit"),
    report: Path | None = typer.Option(None, "--report", help="experiment report to keep up to date "
                                       "(default tiebreak-experiment-EXP.html in the current folder)"),
) -> None:
    """Submit new checkpoints of a training run to a tiebreak experiment and print its stop signal."""
    import httpx

    from tiebreak.services.settings import ClientSettings
    from tiebreak.services.trainer import default_model_spec

    def fail(msg: str, code: int = 2) -> None:
        typer.echo(f"error: {msg}", err=True)
        raise typer.Exit(code)

    if not directory.is_dir():
        fail(f"DIR {directory} is not a folder")
    if interval <= 0:
        fail(f"--interval must be > 0 seconds, got {interval}")
    if not experiment.strip():
        fail("--experiment is empty")
    env = ClientSettings()
    server = server or env.server_url or "http://127.0.0.1:8000"
    token = token or env.token or env.admin_token
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    client = httpx.Client(base_url=server.rstrip("/"), headers=headers, timeout=60.0)
    base = f"/v1/experiments/{experiment}"

    def get(path: str) -> dict:
        try:
            r = client.get(path)
        except httpx.HTTPError as e:
            fail(f"cannot reach the tiebreak service at {server} ({e}); is `tiebreak serve` running?", 1)
        if r.status_code in (401, 403):
            fail(f"the service refused the token (HTTP {r.status_code}); pass --token or set TIEBREAK_TOKEN")
        if r.status_code == 404:
            fail(f"--experiment {experiment!r} does not exist on {server}")
        if r.status_code >= 400:
            fail(f"GET {path}: HTTP {r.status_code} {r.text[:300]}", 1)
        return r.json()

    done = {c["checkpoint"] for c in get(base).get("checkpoints", [])}
    report_path = report or Path(f"tiebreak-experiment-{experiment}.html")
    printed: dict[str, str] = {}          # checkpoint -> the decision line already printed
    report_key = None

    def write_report(key: tuple) -> None:
        nonlocal report_key
        if key == report_key:
            return
        from tiebreak.services.commands._client import ApiError, Client
        from tiebreak.services.commands.report import write_experiment_report

        c = Client(server, token)
        try:
            write_experiment_report(c, experiment, report_path)
        except (ApiError, OSError) as e:
            typer.echo(f"warning: could not write the report {report_path}: {getattr(e, 'msg', e)}", err=True)
            return
        finally:
            c.close()
        if report_key is None:
            typer.echo(f"report: {report_path.resolve()}")
        report_key = key

    seen: dict[str, tuple[int, int]] = {}
    if once:  # files and folders without trainer_state.json need two size readings
        find_checkpoints(directory, seen)
        if seen:
            time.sleep(min(interval, 1.0))
    last_key = None
    while True:
        for p in find_checkpoints(directory, seen):
            if p.name in done:
                continue
            try:
                r = client.post(f"{base}/checkpoints", json={"checkpoint": p.name, "model": default_model_spec(p)})
            except httpx.HTTPError as e:
                typer.echo(f"warning: could not submit {p.name} ({e}); will retry", err=True)
                continue
            done.add(p.name)
            if r.status_code == 409:
                continue
            if r.status_code >= 400:
                typer.echo(f"warning: {p.name} rejected: HTTP {r.status_code} {r.text[:300]}", err=True)
                continue
            typer.echo(f"submitted {p.name}: runs {', '.join(r.json().get('runs', []))}")
        sig = get(f"{base}/signal")
        rows = sig.get("checkpoints", [])
        for row in rows:
            final = row.get("decision") in FINAL and row.get("vs_base", {}).get("run_id")
            if final and printed.get(row["checkpoint"]) != row["decision"]:
                printed[row["checkpoint"]] = row["decision"]
                typer.echo(decision_line(row))
        key = (sig.get("stop"), sig.get("reason"), sig.get("best_checkpoint"), len(rows))
        write_report((key, tuple(sorted(printed.items()))))
        if key != last_key:
            last_key = key
            typer.echo(f"signal: stop={str(sig.get('stop')).lower()} reason={sig.get('reason')} "
                       f"best={sig.get('best_checkpoint')} — {sig.get('message', '')}")
        if once or sig.get("stop"):
            return
        time.sleep(interval)
