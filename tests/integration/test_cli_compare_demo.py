"""`tiebreak compare` / `demo` / `report` end to end on the real service (embedded Redis, uvicorn in-process, no
judges so no model is loaded): exit codes 0 decided, 1 error, 2 bad input, 3 undecided at budget."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tiebreak.services.cli import app

pytestmark = pytest.mark.integration

runner = CliRunner()
REPO = Path(__file__).resolve().parents[2]


def _pairs(tmp_path: Path, n: int, votes: list[list[str]]) -> Path:
    p = tmp_path / "pairs.jsonl"
    with p.open("w") as f:
        for i in range(n):
            f.write(json.dumps({"id": f"p{i}", "prompt": f"question <{i}> & more", "base": f"base answer {i}",
                                "tuned": f"tuned answer {i}", "human_votes": votes[i % len(votes)]}) + "\n")
    return p


def _compare(tmp_path: Path, *args: str):
    return runner.invoke(app, ["compare", "--judges", "none", "--label", "votes", "--pipeline", "local",
                               "--data-dir", str(tmp_path / "redis"), "--seed", "1", *args])


def test_compare_decides_better_exit_0_and_writes_report(tmp_path):
    pairs = _pairs(tmp_path, 30, [["B"], ["B"], ["B", "tie", "B"]])
    out = tmp_path / "r.html"
    res = _compare(tmp_path, "--pairs", str(pairs), "-o", str(out), "--json")
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output.strip().splitlines()[-1])
    assert summary["decision"] == "better" and 1 <= summary["labels"] < 30
    html = out.read_text()
    assert "<svg" in html and "at most 5% of the time" in html and not re.search(r"https?://", html)


def test_compare_undecided_at_budget_exit_3(tmp_path):
    pairs = _pairs(tmp_path, 40, [["A"], ["B"], ["tie"]])
    res = _compare(tmp_path, "--pairs", str(pairs), "--budget", "3", "-o", str(tmp_path / "r.html"), "--json")
    assert res.exit_code == 3, res.output
    assert json.loads(res.output.strip().splitlines()[-1])["decision"] == "undecided"


@pytest.mark.parametrize("args, message", [
    (["--pairs", "/nonexistent/pairs.jsonl"], "no such file"),
    (["--base", "no-such-model", "--tuned", "gemma-3-270m-base", "--prompts", "README.md", "--label", "none"],
     "unknown model"),
    (["--base", "gemma-3-270m-base"], "give --base MODEL --tuned MODEL --prompts FILE"),
    (["--label", "carrier-pigeon", "--pairs", "x.jsonl"], "--label must be one of"),
])
def test_compare_bad_input_exit_2(tmp_path, args, message):
    res = _compare(tmp_path, *args)
    assert res.exit_code == 2, res.output
    assert message in res.output


def test_compare_bad_judge_exit_2(tmp_path):
    pairs = _pairs(tmp_path, 3, [["B"]])
    res = runner.invoke(app, ["compare", "--pairs", str(pairs), "--judges", "gpt-17", "--label", "votes"])
    assert res.exit_code == 2 and "unknown judge" in res.output


def test_unreachable_server_exit_1(tmp_path):
    pairs = _pairs(tmp_path, 3, [["B"]])
    res = runner.invoke(app, ["compare", "--pairs", str(pairs), "--judges", "none", "--label", "votes",
                              "--server", "http://127.0.0.1:9", "--token", "x"])
    assert res.exit_code == 1 and "cannot reach" in res.output
    res = runner.invoke(app, ["report", "abc", "--server", "http://127.0.0.1:9", "--token", "x"])
    assert res.exit_code == 1 and "cannot reach" in res.output


def test_demo_bad_input_exit_2():
    assert runner.invoke(app, ["demo", "--pairs", "0"]).exit_code == 2
    assert runner.invoke(app, ["demo", "--judges", "nope"]).exit_code == 2
    res = runner.invoke(app, ["demo", "--data", "vicuna80", "--pairs", "81"])
    assert res.exit_code == 2 and "--pairs must be between 1 and 80 for --data vicuna80" in res.output
    res = runner.invoke(app, ["demo", "--data", "arena"])
    assert res.exit_code == 2 and "--data must be one of pandalm, vicuna80" in res.output


def test_demo_labels_only_end_to_end(tmp_path):
    """The real `tiebreak demo` entry point (subprocess) on real recorded Vicuna-80 pairs, labels only."""
    out = tmp_path / "demo.html"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    proc = subprocess.run(
        [sys.executable, "-m", "tiebreak.services.cli", "demo", "--data", "vicuna80", "--judges", "none", "--pairs",
         "20", "--pipeline", "local",
         "--label-delay", "0", "--data-dir", str(tmp_path / "redis"), "-o", str(out), "--json"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode in (0, 3), proc.stderr[-2000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["decision"] in ("better", "worse", "equivalent", "undecided")
    assert summary["n_pairs"] == 20 and summary["labels"] >= 1
    assert Path(summary["report"]) == out.resolve() and "Vicuna-80" in out.read_text()


def _labels_in_report(html: str) -> int:
    """The label count a run's own report states (the service renders it from the run's state)."""
    m = re.search(r"<b>(\d+)</b><span>human labels", html)
    assert m, "the report states no label count"
    return int(m.group(1))


def _lane_labels(items: list[dict], votes, seed: int) -> int:
    """Labels to the verdict of one demo lane, computed without the service: the sampler family the service
    creates for a run (α 0.05, margin 0.05, rng [seed, 0]) fed each drawn pair's recorded crowd answer."""
    import numpy as np

    from tiebreak.sampler.engine import ComparisonConfig
    from tiebreak.sampler.family import ComparisonFamily

    y = [{"tuned": 1.0, "base": 0.0, "tie": 0.5}[it["human_votes"][0]] for it in items]
    cfg = ComparisonConfig(alpha=0.05, margin=0.05, method="classical" if votes is None else "active")
    fam = ComparisonFamily.create({"overall": votes}, cfg, rng=np.random.default_rng([seed, 0]), n_items=len(items),
                                  voted=None if votes is None else np.ones(len(items), dtype=bool))
    while not fam.finished and (drawn := fam.next_items(1)):
        fam.record_labels(drawn[0], {"overall": y[drawn[0]]})
    return len(fam.leader.labels)


def test_demo_side_by_side_shows_the_recorded_judges_saving_labels_and_prints_each_runs_labels(tmp_path):
    """`tiebreak demo` as `make run` runs it (default pool: 600 PandaLM pairs; default seed; default free jury, here
    in-process) decides the same comparison three ways — the local jury, labels only, GPT-3.5-turbo's and
    PandaLM-7B's recorded verdicts as judge_votes — and says the recorded judges are recorded. The label counts it
    prints are those of the three runs (each matches that run's own service report), the labels-only and recorded
    counts are exactly what the sampler gives on these pairs without the service, and the recorded judges save
    labels: a recorded lane that stopped using its votes would need as many as labels only (146 here)."""
    import numpy as np

    from tiebreak.services.demo import DATASETS, demo_items, recorded_votes

    out = tmp_path / "demo.html"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    proc = subprocess.run(
        [sys.executable, "-m", "tiebreak.services.cli", "demo", "--pipeline", "local", "--label-delay", "0",
         "--data-dir", str(tmp_path / "redis"), "-o", str(out), "--json"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode in (0, 3), proc.stderr[-2000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["n_pairs"] == 600 and summary["data"] == "pandalm" and summary["first_label_s"] is not None
    rows = {r["lane"]: r for r in summary["comparison"]}
    assert set(rows) == {"live", "labels-only", "recorded"}
    assert rows["recorded"]["judges"] == "recorded:gpt-3.5-turbo, recorded:pandalm-7b"
    assert rows["labels-only"]["judges"] == "none"
    text = " ".join(proc.stderr.split())      # rich wraps lines
    assert "recorded:pandalm-7b" in text and "recorded, not computed" in text and "Apache-2.0" in text
    side = re.search(r"side by side \(same pairs, same crowd answers, same α\):(.*?) report:", text)
    assert side, text[-1500:]
    printed = [int(n) for n in re.findall(r"(\d+) labels →", side.group(1))]
    assert printed == [r["labels"] for r in summary["comparison"]]
    reports = {k: Path(v) for k, v in summary["reports"].items()}
    assert reports["live"] == out.resolve()
    for lane, row in rows.items():
        html = reports[lane].read_text()
        assert _labels_in_report(html) == row["labels"] >= 1
    main_html = out.read_text()
    assert "Side by side" in main_html and "recorded, not computed" in main_html
    assert reports["recorded"].name in main_html and "recorded:pandalm-7b" in reports["recorded"].read_text()
    # the counts the demo claims are the sampler's, and the recorded judges save labels with a measured share
    items = demo_items()
    recorded = np.array([[np.nan if v is None else v for v in recorded_votes(it).values()] for it in items])
    seed = DATASETS["pandalm"].default_seed
    assert rows["labels-only"]["labels"] == _lane_labels(items, None, seed)
    assert rows["recorded"]["labels"] == _lane_labels(items, recorded, seed) < rows["labels-only"]["labels"]
    assert rows["recorded"]["value"]["interval"][0] > 0
    saved = rows["labels-only"]["labels"] - rows["recorded"]["labels"]
    assert f"the recorded GPT-3.5-turbo + PandaLM-7B verdicts saved {saved} labels" in text
    d = rows["labels-only"]["labels"] - rows["live"]["labels"]
    verb = "saved" if d > 0 else "bought nothing" if d == 0 else "cost"
    assert f"On this run the local jury {verb}" in text


def test_demo_no_compare_runs_one_run(tmp_path):
    out = tmp_path / "demo.html"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    proc = subprocess.run(
        [sys.executable, "-m", "tiebreak.services.cli", "demo", "--judges", "none", "--no-compare", "--pairs", "10",
         "--pipeline", "local", "--label-delay", "0", "--data-dir", str(tmp_path / "redis"), "-o", str(out),
         "--json"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode in (0, 3), proc.stderr[-2000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert [r["lane"] for r in summary["comparison"]] == ["labels-only"]
    assert "Side by side" not in out.read_text() and "recorded:" not in proc.stderr


@pytest.mark.slow
def test_demo_with_a_real_judge_on_ray(tmp_path):
    """`make run` in miniature: local Ray, the Gemma-270M GGUF judge voting live, simulated annotator, report."""
    out = tmp_path / "demo.html"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    proc = subprocess.run(
        [sys.executable, "-m", "tiebreak.services.cli", "demo", "--judges", "gemma-3-270m-base", "--pairs", "6",
         "--label-delay", "0", "--wait-for-votes", "--data-dir", str(tmp_path / "redis"), "-o", str(out), "--json"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode in (0, 3), proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["n_pairs"] == 6 and summary["judging_seconds"] is not None and summary["votes"] == 6
    html = out.read_text()
    assert "gemma-3-270m-base" in html and "Judge agreement and bias" in html


@pytest.mark.slow
def test_demo_default_jury_on_ray(tmp_path):
    """`make run`'s default jury (judges.defaults.DEFAULT_JURY: free feature jurors) on local Ray: the feature
    actors reserve no CPU, so on a 2-core machine they cannot leave each other unscheduled (a hang)."""
    from tiebreak.judges.defaults import DEFAULT_JURY

    out = tmp_path / "demo.html"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    proc = subprocess.run(
        [sys.executable, "-m", "tiebreak.services.cli", "demo", "--pairs", "12", "--label-delay", "0", "--wait-for-votes",
         "--data-dir", str(tmp_path / "redis"), "-o", str(out), "--json"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode in (0, 3), proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["n_pairs"] == 12 and summary["judging_seconds"] is not None and summary["votes"] == 12
    html = out.read_text()
    assert all(name in html for name in DEFAULT_JURY)
