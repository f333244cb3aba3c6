"""The environment variables judges/ reads, in one place (judges/ imports nothing of services/, so it has its own
small reader instead of services/settings.py). Read at call time: a Ray worker or a test that sets a variable
sees it at once.

- ``TIEBREAK_MODEL_DIR``: where packaged GGUF judge weights are assembled (default ~/.cache/tiebreak/models).
- ``TIEBREAK_THREADS``: llama.cpp threads per in-process GGUF judge (0 or unset: all cores).
- ``TIEBREAK_API_KEY_HOSTS``: which API-key variable may be sent to which hosts (judges/backends.py).
- the API-key variables themselves (e.g. ``OPENAI_API_KEY``), looked up by name, only for the bound hosts.
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_KEY_HOSTS = "OPENAI_API_KEY=api.openai.com"


def model_dir() -> Path:
    return Path(os.environ.get("TIEBREAK_MODEL_DIR") or Path.home() / ".cache" / "tiebreak" / "models")


def threads() -> int:
    """0 when unset (the caller picks a default)."""
    raw = os.environ.get("TIEBREAK_THREADS", "").strip() or "0"
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"TIEBREAK_THREADS must be a whole number of threads (got {raw!r})") from None


def api_key_hosts_spec() -> str:
    return os.environ.get("TIEBREAK_API_KEY_HOSTS", DEFAULT_KEY_HOSTS)


def secret(name: str) -> str | None:
    """The value of the API-key variable ``name`` (None when unset or empty)."""
    return os.environ.get(name) or None
