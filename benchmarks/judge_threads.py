"""CPU per prompt token of a GGUF judge by llama.cpp thread count and polling (docs/benchmarks.md, "Second pass").

``python -m benchmarks.judge_threads --threads 1 --poll 0``: one xllamacpp server with the given threads, the
pointwise judge prompts of 3 Vicuna-80 pairs (seed 5, responses cut at 300 characters: 6 passes), one token
each; prints prompt tokens evaluated (llama.cpp ``timings.prompt_n``), CPU-seconds of this process, wall
seconds, CPU milliseconds per token and the load average. Run it several times with each setting on a shared
machine: the load moves between runs.
"""

from __future__ import annotations

import argparse
import json
import time


def main(argv: list[str] | None = None) -> None:
    import xllamacpp as xlc

    from tiebreak.judges.evaluate import load_items
    from tiebreak.judges.jury import Judge
    from tiebreak.judges.models import resolve_preset

    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="qwen2.5-coder-1.5b")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--poll", type=int, default=50, help="llama.cpp thread polling level 0-100 (its default 50)")
    ap.add_argument("--data", default="../shared/data/vicuna80_qlora_prd.jsonl")
    a = ap.parse_args(argv)
    p = xlc.CommonParams()
    p.model.path = str(resolve_preset(a.preset))
    p.n_ctx, p.n_parallel, p.cache_prompt, p.warmup, p.verbosity = 4096, 1, True, False, -1
    for cpu in (p.cpuparams, p.cpuparams_batch):
        cpu.n_threads, cpu.poll = a.threads, a.poll
    server = xlc.Server(p)

    class _PromptsOnly:   # the judge only builds prompts here; the server is called directly
        name = a.preset

        def generate(self, prompts: list[str], *, max_tokens: int = 256, temperature: float = 0.0) -> list[str]:
            raise NotImplementedError

        def choice_logprobs(self, prompt, choices):
            raise NotImplementedError

    judge = Judge(_PromptsOnly(), mode="pointwise", max_chars=1000)
    cpu = wall = 0.0
    tokens = 0
    for it in load_items(a.data, 3, seed=5):
        for resp in (it["response_a"][:300], it["response_b"][:300]):
            req = {"messages": judge.pointwise_prompt(it["question"], resp, "overall"), "max_tokens": 1,
                   "temperature": 0, "cache_prompt": True}
            c0, t0 = time.process_time(), time.perf_counter()
            r = server.handle_chat_completions(req)
            cpu, wall = cpu + time.process_time() - c0, wall + time.perf_counter() - t0
            tokens += int(r["timings"]["prompt_n"])
    with open("/proc/loadavg") as f:
        load = f.read().split()[0]
    print(json.dumps({"threads": a.threads, "poll": a.poll, "tokens": tokens, "cpu_s": round(cpu, 2),
                      "wall_s": round(wall, 2), "cpu_ms_per_token": round(1000 * cpu / tokens, 1), "load": load}))


if __name__ == "__main__":
    main()
