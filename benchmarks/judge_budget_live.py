"""A live GGUF judge under ``judge_budget: "auto"`` on labels it cannot predict (issue 10's target: a judge with no
signal costs <= 10 % of the CPU it costs today in a run of >= 200 pairs).

    python -m benchmarks.judge_budget_live [--pairs 200] [--judge qwen2.5-coder-0.5b:pointwise] [--label-every 1]

The real RunService and judge pipeline (a local Ray; the judge is an actor, the GGUF judge through xllamacpp, embedded Redis in a
temporary directory) on the first ``--pairs`` PandaLM test items. One annotator labels a pair every
``--label-every`` seconds with a coin flip (tuned or base wins with probability 1/2, seeded): no judge can have
signal on these labels. It stops when the judge stops (the auto budget's trial or stop rule), the run is
decided, or every pair is voted. Prints one JSON line: pairs the judge voted and its CPU-seconds (both from the
run's status), CPU-seconds per pair, and the share of today's cost (budget "all" votes every pair: CPU-seconds
per pair x pairs; the per-pair cost is measured on the pairs it voted).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def pairs_from_pandalm(n: int) -> list[dict]:
    rows = [json.loads(line) for line in (DATA / "pandalm_testset.jsonl").read_text().splitlines()[:n]]
    # a few PandaLM responses are JSON booleans (the model answered "True"): outputs are text
    return [{"id": f"p{r['id']}", "prompt": str(r["question"]), "base": str(r["response_a"]),
             "tuned": str(r["response_b"])} for r in rows]


def main(argv: list[str] | None = None) -> None:
    from tiebreak.services.api.models import RunCreate
    from tiebreak.services.pipeline import Pipeline
    from tiebreak.services.runs import RunService
    from tiebreak.services.store import RedisStore

    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=200)
    ap.add_argument("--judge", default="qwen2.5-coder-0.5b:pointwise")
    ap.add_argument("--label-every", type=float, default=1.0, help="seconds between the annotator's labels")
    ap.add_argument("--timeout", type=float, default=1800.0)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)

    pairs = pairs_from_pandalm(a.pairs)
    tuned_text = {p["id"]: p["tuned"] for p in pairs}
    rng = np.random.default_rng(a.seed)
    with tempfile.TemporaryDirectory() as tmp:
        store = RedisStore.open(data_dir=tmp)
        try:
            svc = RunService(store)
            svc.pipeline = Pipeline(svc, mode="ray", batch_size=2)   # an actor: its CPU clock counts the model's threads
            t0 = time.time()
            spec = {"name": "judge-budget-live", "pairs": pairs, "judges": [a.judge], "seed": a.seed,
                    "judge_budget": "auto"}
            rid = svc.create_run(RunCreate.model_validate(spec).model_dump())      # validated as over HTTP
            labels, v = 0, {}
            while time.time() - t0 < a.timeout:
                st = svc.status(rid)
                v = st["judges_value"].get(a.judge, {})
                if v.get("state") not in (None, "running", "waiting-for-labels") or st.get("finished"):
                    break
                nxt = svc.next_pair(rid, "coin")
                if nxt is not None:
                    tuned_wins = bool(rng.integers(2))
                    left_is_tuned = nxt["left"] == tuned_text[nxt["pair_id"]]
                    svc.submit_label(rid, {"pair_id": nxt["pair_id"], "annotator": "coin", "lease_id": nxt["lease_id"],
                                           "verdict": "left" if left_is_tuned == tuned_wins else "right"})
                    labels += 1
                time.sleep(a.label_every)
            svc.pipeline.wait(rid, 120)
            st = svc.status(rid)
            v = st["judges_value"].get(a.judge, {})
            voted, cpu = int(v.get("pairs_voted", 0)), float(v.get("cpu_s", 0.0))
            per_pair = cpu / voted if voted else float("nan")
            print(json.dumps({
                "judge": a.judge, "pairs": a.pairs, "label_every_s": a.label_every, "labels_given": labels,
                "state": v.get("state"), "stopped_by": v.get("stopped_by"),
                "stopped_at_labels": v.get("stopped_at_labels"), "pairs_voted": voted, "cpu_s": round(cpu, 1),
                "cpu_s_per_pair": round(per_pair, 2), "cpu_s_today": round(per_pair * a.pairs, 1),
                "share_of_today": round(voted / a.pairs, 3), "wall_s": round(time.time() - t0, 1),
                "value": v.get("value"), "interval": v.get("interval")}), flush=True)
        finally:
            store.close()
            import ray

            ray.shutdown()      # the next run of this command starts its own local Ray


if __name__ == "__main__":
    main()
