"""The default jury of `tiebreak judge-eval`, `compare`, `demo` (one place; no heavy imports).

Chosen by measurement (docs/benchmarks.md, "Judges"): information (cross-fitted explained label variance) per
CPU-second on the development sets, among juries that run after `make setup` alone (no 1.5B weights).
"""

DEFAULT_JURY: tuple[str, ...] = ("qwen2.5-coder-0.5b:pointwise",)
