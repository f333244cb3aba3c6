"""`tiebreak compare` on models + prompts (the real Gemma-270M GGUF on both sides, in-process pipeline): no silent
minutes — while outputs are made and the judge votes it prints a progress line with counts and an ETA."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def test_compare_prints_generation_progress_with_an_eta(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(f"Name a fruit, number {i}.\n" for i in range(3)))
    proc = subprocess.run(
        [sys.executable, "-m", "tiebreak.services.cli", "compare", "--base", "gemma-3-270m-base",
         "--tuned", "gemma-3-270m-base", "--prompts", str(prompts), "--max-tokens", "4",
         "--judges", "feature:length", "--label", "none", "--pipeline", "local",
         "--data-dir", str(tmp_path / "redis"), "--seed", "1"],
        capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("generating: ")]
    assert lines, proc.stderr
    assert re.fullmatch(r"generating: 0/6 outputs \(0/3 pairs\), ETA — · labels 0", lines[0]), lines
    # once outputs exist the rate is measured and the ETA is a time
    # (the judge votes each pair as soon as both its outputs exist: "N voted" while generating)
    assert any(re.search(r"generating: \d/6 outputs \(\d/3 pairs(, \d voted)?\), ETA \d+ (s|min)", ln)
               for ln in lines), lines
    assert re.fullmatch(r"[0-9a-f]{16}", proc.stdout.strip().splitlines()[-1])   # --label none: the run id
