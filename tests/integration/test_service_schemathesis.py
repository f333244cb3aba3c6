"""Schemathesis against the live OpenAPI schema: no generated request may get a 5xx."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from support.serve_process import ServeProcess

pytestmark = pytest.mark.integration
ADMIN = "admin-test-token"


def test_no_server_errors(tmp_path):
    st = shutil.which("schemathesis") or str(Path(sys.executable).parent / "schemathesis")
    if not Path(st).exists():
        pytest.fail("schemathesis is not installed: pip install -e '.[dev]'")
    with ServeProcess(tmp_path, admin_token=ADMIN) as s:
        cmd = [st, "run", f"{s.url}/openapi.json", "-H", f"Authorization: Bearer {ADMIN}", "--checks",
               "not_a_server_error", "-n", "25", "--generation-deterministic", "--no-color",
               "--request-timeout", "20"]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=tmp_path)
        out = p.stdout + p.stderr
        assert p.returncode == 0, out[-4000:]
        assert "passed" in out and "Tested:" in out, out[-2000:]
