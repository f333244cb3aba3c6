#!/usr/bin/env bash
# `make gpu-check`: a short end-to-end check of the vLLM backend on a machine with a CUDA GPU.
# Installs the [gpu] extra if vLLM is missing, then runs generate + choice logprobs (+ a LoRA request when an
# adapter can be built offline with peft) and prints PASS/FAIL with timings.
# Env: TIEBREAK_GPU_MODEL  HF model id or local dir/.gguf (default: packaged Qwen2.5-Coder-0.5B GGUF)
#      TIEBREAK_GPU_LORA   path of a LoRA adapter for that model (optional)
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "FAIL gpu-check: no CUDA GPU visible (nvidia-smi)"; exit 1
fi
nvidia-smi -L
if ! "$PY" -c "import vllm" >/dev/null 2>&1; then
  echo "installing the [gpu] extra (vllm) ..."
  t0=$(date +%s)
  "$PY" -m pip install -q -e ".[gpu,models]" || { echo "FAIL gpu-check: pip install .[gpu] failed"; exit 1; }
  echo "install: $(( $(date +%s) - t0 )) s"
fi
exec timeout "${GPU_CHECK_TIMEOUT:-540}" "$PY" - <<'PYEOF'
import math, os, sys, time, traceback
results = []
def step(name, fn):
    t = time.perf_counter()
    try:
        out = fn()
        results.append((name, "PASS", time.perf_counter() - t, out))
        return out
    except Exception as e:  # report and go on
        traceback.print_exc()
        results.append((name, "FAIL", time.perf_counter() - t, f"{type(e).__name__}: {e}"))
        return None

from tiebreak.judges.backends import make_backend
from tiebreak.judges.jury import Judge

model = os.environ.get("TIEBREAK_GPU_MODEL")
if not model:
    from tiebreak.judges.models import resolve_preset
    model = str(resolve_preset("qwen2.5-coder-0.5b"))
lora = os.environ.get("TIEBREAK_GPU_LORA")
spec = {"backend": "vllm", "model": model, "gpu_memory_utilization": 0.5, "max_model_len": 4096}
if model.endswith(".gguf"):
    spec["tokenizer"] = os.environ.get("TIEBREAK_GPU_TOKENIZER", model)
if lora:
    spec["lora"] = lora
be = step("load engine", lambda: make_backend(spec))
if be is not None:
    gen = step("generate x8", lambda: be.generate(["Write one sentence about the sea."] * 8, max_tokens=32))
    if gen is not None and not all(g.strip() for g in gen):
        results.append(("generate non-empty", "FAIL", 0.0, gen))
    def logprobs():
        s = be.choice_logprobs("Is the sky blue? Answer yes or no.", ["yes", "no"])
        assert any(math.isfinite(v) for v in s.values()), s
        return s
    step("choice logprobs", logprobs)
    def vote():
        v = Judge(be).vote("What is 2+2?", "5", "4")
        assert 0 <= v.p_tuned_better <= 1, v
        return round(v.p_tuned_better, 3)
    step("pairwise vote (both orders)", vote)
    if lora:
        step("LoRA request generate", lambda: be.generate(["Say hi."], max_tokens=8, use_lora=True))
        step("base (no LoRA) generate", lambda: be.generate(["Say hi."], max_tokens=8, use_lora=False))
    else:
        results.append(("LoRA request", "SKIP", 0.0, "set TIEBREAK_GPU_LORA to an adapter dir for this model"))
for name, st, dt, out in results:
    print(f"{st:4s} {name:32s} {dt:7.2f}s  {str(out)[:120]}")
bad = [r for r in results if r[1] == "FAIL"]
print("FAIL gpu-check" if bad else "PASS gpu-check")
sys.exit(1 if bad else 0)
PYEOF
