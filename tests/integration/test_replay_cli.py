"""`tiebreak replay` on the real shared data: the documented JSON interface, bad input, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
ARENA = DATA / "chatbot_arena_ppr.jsonl"
VICUNA = DATA / "vicuna80_qlora_prd.jsonl"



@pytest.fixture(autouse=True, scope="module")
def _shared_data_present() -> None:
    # The replay contract is tested on the real data; a checkout without shared/ beside it must fail loudly,
    # not pass by skipping every test.
    if not ARENA.exists():
        pytest.fail(f"{ARENA} is missing: the project's shared/ folder must lie beside the checkout")


def tiebreak(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tiebreak.services.cli", *args], capture_output=True, text=True,
                          timeout=300)


def test_one_pair_json_fields_and_values():
    out = tiebreak("replay", str(ARENA), "--base", "gpt-3.5-turbo", "--tuned", "gpt-4", "--runs", "5",
                   "--method", "classical", "--json")
    assert out.returncode == 0, out.stderr
    lines = [json.loads(x) for x in out.stdout.splitlines()]
    row, summary = lines
    assert {"base", "tuned", "items", "theta", "method", "runs", "decisions", "wrong", "mean_labels",
            "median_labels"} <= set(row)
    assert set(row["decisions"]) == {"better", "worse", "equivalent", "undecided"}
    assert (row["base"], row["tuned"], row["items"], row["runs"]) == ("gpt-3.5-turbo", "gpt-4", 299, 5)
    assert row["theta"] == pytest.approx(0.664, abs=0.001)  # gpt-4 beats gpt-3.5 in Arena
    assert row["decisions"]["better"] == 5 and row["wrong"] == 0
    assert set(summary) == {"summary", "pairs", "total_mean_labels", "wrong", "decided", "runs_total", "seconds"}
    assert summary["pairs"] == 1 and summary["decided"] == 5 and summary["runs_total"] == 5
    # orientation: swapping base and tuned mirrors theta and the verdict
    flipped = tiebreak("replay", str(ARENA), "--base", "gpt-4", "--tuned", "gpt-3.5-turbo", "--runs", "2",
                       "--method", "ppi", "--json")
    row2 = json.loads(flipped.stdout.splitlines()[0])
    assert row2["theta"] == pytest.approx(1 - row["theta"], abs=1e-6) and row2["decisions"]["worse"] == 2


def test_all_pairs_orients_by_name_and_respects_min_items():
    out = tiebreak("replay", str(ARENA), "--all-pairs", "--min-items", "400", "--runs", "2", "--json")
    assert out.returncode == 0, out.stderr
    rows = [json.loads(x) for x in out.stdout.splitlines()]
    pairs = rows[:-1]
    assert rows[-1]["pairs"] == len(pairs) >= 2
    for r in pairs:
        assert r["base"] < r["tuned"] and r["items"] >= 400 and r["method"] == "active"


def test_symmetrize_counts_every_verdict_as_wrong_and_is_seeded():
    args = ("replay", str(VICUNA), "--base", "guanaco-7b", "--tuned", "gpt4", "--symmetrize", "--runs", "4",
            "--seed", "3", "--json", "--method", "classical")
    a, b = tiebreak(*args), tiebreak(*args)
    row = json.loads(a.stdout.splitlines()[0])
    assert row["theta"] == 0.5 and row["items"] % 2 == 0
    assert row["wrong"] == row["decisions"]["better"] + row["decisions"]["worse"]
    assert a.stdout.splitlines()[0] == b.stdout.splitlines()[0]  # same seed, same runs


@pytest.mark.parametrize("args, message", [
    (("--base", "gpt-4", "--tuned", "gpt-9"), "--tuned 'gpt-9' is not a model in this file; valid:"),
    (("--base", "gpt-4"), "give both --base and --tuned"),
    (("--all-pairs", "--min-items", "100000"), "no model pair has >= 100000 items"),
    (("--method", "magic"), "--method 'magic' is not one of classical, ppi, active"),
    (("--all-pairs", "--judges", "gpt-5"), "unknown judge(s) gpt-5; valid:"),
    (("--all-pairs", "--alpha", "1.5"), "alpha must lie in (0, 1)"),
    (("--all-pairs", "--prior", "other-pairs", "--method", "classical"), "needs --method ppi or active"),
])
def test_bad_input_is_one_clear_line_and_exit_2(args, message):
    out = tiebreak("replay", str(ARENA), *args)
    assert out.returncode == 2
    assert message in out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_bad_file(tmp_path):
    missing = tiebreak("replay", str(tmp_path / "none.jsonl"))
    assert missing.returncode == 2 and "no such file" in missing.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"human_votes": ["A"], "model_a": "x"}\n')
    out = tiebreak("replay", str(bad))
    assert out.returncode == 2 and "bad.jsonl:1: missing field(s) model_b" in out.stderr
    bad.write_text('{"human_votes": ["C"], "model_a": "x", "model_b": "y"}\n')
    out = tiebreak("replay", str(bad))
    assert out.returncode == 2 and "human_votes must be" in out.stderr


def test_slices_from_meta_category_adds_per_slice_keys_and_keeps_the_documented_ones():
    out = tiebreak("replay", str(VICUNA), "--base", "guanaco-7b", "--tuned", "gpt4", "--runs", "3",
                   "--method", "classical", "--slices-from", "meta.category", "--json")
    assert out.returncode == 0, out.stderr
    row, summary = (json.loads(x) for x in out.stdout.splitlines())
    assert {"base", "tuned", "items", "theta", "method", "runs", "decisions", "wrong", "mean_labels",
            "median_labels"} <= set(row)
    assert len(row["slices"]) == 9 and row["slices"]["math"]["items"] == 3
    assert row["alpha_split"].startswith("bonferroni over 10 questions")
    assert row["overall_mean_labels"] <= row["mean_labels"]
    assert {"summary", "pairs", "total_mean_labels", "wrong", "decided", "runs_total", "seconds",
            "total_overall_mean_labels", "slice_wrong", "family_wrong_runs"} <= set(summary)
    only = tiebreak("replay", str(VICUNA), "--base", "guanaco-7b", "--tuned", "gpt4", "--runs", "3",
                    "--method", "classical", "--slices-from", "meta.category", "--slices", "coding", "--json")
    row1 = json.loads(only.stdout.splitlines()[0])
    assert list(row1["slices"]) == ["coding"] and "0.05/2" in row1["alpha_split"]


@pytest.mark.parametrize("args, message", [
    (["--slices-from", "meta.category", "--slices", "poetry"], "poetry tags no item"),
    (["--slices", "coding"], "--slices needs slices on the items"),
    (["--slices-from", "meta"], "must be a string or a list of strings"),
])
def test_bad_slice_options_are_one_clear_line(args, message):
    out = tiebreak("replay", str(VICUNA), "--base", "guanaco-7b", "--tuned", "gpt4", "--runs", "1",
                   "--method", "classical", *args)
    assert out.returncode == 2 and message in out.stderr, out.stderr


def test_arena_field_slices_find_the_worse_opponents(tmp_path):
    """vicuna-13b is better than the field (theta 0.59) and worse against gpt-4, claude-v1, gpt-3.5-turbo."""
    sliced = tmp_path / "arena_v13.jsonl"
    made = subprocess.run([sys.executable, "-m", "benchmarks.arena_slices", str(ARENA), str(sliced),
                           "--model", "vicuna-13b", "--min-battles", "250"], capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    out = tiebreak("replay", str(sliced), "--base", "field", "--tuned", "vicuna-13b", "--runs", "2",
                   "--method", "active", "--json")
    assert out.returncode == 0, out.stderr
    row = json.loads(out.stdout.splitlines()[0])
    assert row["decisions"]["better"] == 2
    for opp in ("vs-gpt-4", "vs-claude-v1"):
        assert row["slices"][opp]["decisions"]["worse"] == 2
    assert row["family_wrong_runs"] == 0
