"""`tiebreak compare --pairs` with a `slices` field, end to end on the real embedded service (no judges)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tiebreak.services.cli import app

pytestmark = pytest.mark.integration

runner = CliRunner()


def _pairs(tmp_path: Path, n: int, slices=lambda i: ["edge-case"] if i < 40 else ["billing"]) -> Path:
    p = tmp_path / "pairs.jsonl"
    with p.open("w") as f:
        for i in range(n):
            f.write(json.dumps({"id": f"p{i}", "prompt": f"question {i}", "base": f"base answer {i}",
                                "tuned": f"tuned answer {i}", "slices": slices(i),
                                "human_votes": ["A"] if i < 40 else (["B"] if i % 5 else ["A"])}) + "\n")
    return p


def _compare(tmp_path: Path, *args: str):
    return runner.invoke(app, ["compare", "--judges", "none", "--label", "votes", "--pipeline", "local",
                               "--data-dir", str(tmp_path / "redis"), "--seed", "1", *args])


def test_compare_pairs_with_slices_reports_the_worse_slice(tmp_path):
    out = tmp_path / "r.html"
    res = _compare(tmp_path, "--pairs", str(_pairs(tmp_path, 160)), "-o", str(out), "--json")
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output.strip().splitlines()[-1])
    assert summary["decision"] == "better"
    assert summary["slices"]["edge-case"]["decision"] == "worse"
    assert summary["slices"]["billing"]["decision"] == "better"
    assert summary["alpha_split"].startswith("holm over 3 questions")
    assert "slice edge-case: worse" in res.output
    assert "Per-slice verdicts" in out.read_text()


def test_compare_bad_slices_field_exit_2(tmp_path):
    res = _compare(tmp_path, "--pairs", str(_pairs(tmp_path, 10, slices=lambda i: [3])))
    assert res.exit_code == 2 and "slices must be a list of non-empty strings" in res.output


def test_compare_unknown_slice_of_interest_exit_2(tmp_path):
    res = _compare(tmp_path, "--pairs", str(_pairs(tmp_path, 10)), "--slices-of-interest", "refunds")
    assert res.exit_code == 2, res.output
    assert "refunds" in res.output and "tags no pair" in res.output
