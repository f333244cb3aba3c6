"""The default jury of `tiebreak judge-eval`, `compare`, `demo` (one place; no heavy imports).

Chosen by measurement (docs/benchmarks.md, "Judges"): cross-fitted explained label variance per CPU-second on
the development sets (Vicuna-80, HH-RLHF harmless), among juries that run after `make setup` alone. On both
sets Qwen2.5-Coder-0.5B (pointwise 5.5-7.6 CPU-s/pair, pairwise 6.5) explained no label variance (≤ 0,
40 pairs each), while the free text features relative length + refusal/hedging + prompt coverage explained
0.33 (Vicuna-80) and 0.035 (HH-RLHF) on 1,000 pairs each, at ~0.1 ms of CPU per pair. Model judges stay one
``--judges`` flag away (e.g. ``qwen2.5-coder-0.5b,feature:length``).
"""

DEFAULT_JURY: tuple[str, ...] = ("feature:length", "feature:refusal", "feature:coverage")
