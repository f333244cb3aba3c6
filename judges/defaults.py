"""The default jury of `tiebreak judge-eval`, `compare`, `demo` (one place; no heavy imports).

Chosen by measurement (docs/benchmarks.md, "Judges"): cross-fitted explained label variance per CPU-second on
the development sets (Vicuna-80, HH-RLHF harmless), among juries that run after `make setup` alone. On both
sets Qwen2.5-Coder-0.5B (pointwise 5.5-7.6 CPU-s/pair, pairwise 6.5) explained no label variance (≤ 0,
40 pairs each), while the free text features relative length + refusal/hedging + prompt coverage explained
0.33 (Vicuna-80) and 0.035 (HH-RLHF) on 1,000 pairs each, at ~0.1 ms of CPU per pair. Model judges stay one
``--judges`` flag away (e.g. ``qwen2.5-coder-0.5b,feature:length``).

Qwen2.5-Coder-1.5B pointwise (``make setup-large``) was measured next to them (40 pairs per set): on HH-RLHF it
explains no label variance (EV −0.05 alone, jury −0.030 vs the features' −0.011 on the same pairs) and on
Vicuna-80 its calibration weight is negative (jury EV 0.158 vs 0.125, +0.033 for 11.5 CPU-s/pair), so it is not
in the default; on the PandaLM test sample it and the features reach raw 0.750 / calibrated 0.650 at
7.8 CPU-s/pair (docs/benchmarks.md, "Second pass").
"""

DEFAULT_JURY: tuple[str, ...] = ("feature:length", "feature:refusal", "feature:coverage")
