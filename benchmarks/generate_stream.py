"""A `generate` run streams (issue 10): seconds from the create request to the first pair served and the first
vote, against the time until every output and every vote exists (what a run waited for before).

    python -m benchmarks.generate_stream [--prompts N] [--max-tokens T] [--pipeline local|ray] [--model PRESET]
                                         [--judge JUDGE]

Starts `tiebreak serve` (embedded Redis, the given pipeline) on 127.0.0.1, creates a run that generates both
sides with a local GGUF model (the same preset for base and tuned: plumbing, not quality) over N prompts, with the
judge JUDGE (default the free `feature:length`), and one annotator that asks `next` every 0.25 s (a 204 with
Retry-After is counted) and labels each pair it gets at once, always "tie" (theta = 1/2: the run is not decided
early, which would stop generation). Prints one JSON line: first_pair_s, the outputs made at that moment, labels
given while generation was still going, first_vote_s (and the pairs generated then), all_outputs_s,
all_votes_s, ready_s. Times are those of the status polls (0.25 s apart, plus the requests).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from support.serve_process import ServeProcess  # noqa: E402

ADMIN = "bench-admin-token-generate"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=40)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--pipeline", default="ray", choices=["local", "ray"])
    ap.add_argument("--model", default="gemma-3-270m-base")
    ap.add_argument("--judge", default="feature:length", help="the run's judge (a preset such as "
                    "gemma-3-270m-base, or a feature: juror)")
    ap.add_argument("--no-labels", action="store_true", help="no annotator: the machines' pace alone (a run whose "
                    "every pair is labelled is finished, and its judge stops)")
    ap.add_argument("--timeout", type=float, default=1800.0, help="stop waiting after this many seconds (the "
                    "line then has no ready_s)")
    a = ap.parse_args()
    model = {"backend": "gguf", "preset": a.model, "n_ctx": 1024}
    prompts = [{"id": f"q{i}", "text": f"Give one practical tip about topic number {i} in a sentence."}
               for i in range(a.prompts)]
    out: dict = {"prompts": a.prompts, "max_tokens": a.max_tokens, "pipeline": a.pipeline, "model": a.model,
                 "judge": a.judge, "annotator": not a.no_labels}
    with tempfile.TemporaryDirectory() as d, ServeProcess(d, admin_token=ADMIN, pipeline=a.pipeline) as s, \
            httpx.Client(base_url=s.url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=60) as c:
        t0 = time.monotonic()
        r = c.post("/v1/runs", json={"name": "bench-generate", "seed": 0, "judges": [a.judge],
                                     "generate": {"base": model, "tuned": model, "prompts": prompts,
                                                  "max_tokens": a.max_tokens}})
        r.raise_for_status()
        rid = r.json()["run_id"]
        waits = labels_while_generating = 0
        first = all_out = first_vote = all_votes = None
        while time.monotonic() - t0 < a.timeout:
            nxt = None if a.no_labels else c.get(f"/v1/runs/{rid}/next", params={"annotator": "bench"})
            st = c.get(f"/v1/runs/{rid}").json()
            if st["status"] == "failed":
                raise RuntimeError(st["error"])
            if all_out is None and st["generated"] == a.prompts:
                all_out = time.monotonic() - t0
            if first_vote is None and st["judged"] > 0:
                first_vote = time.monotonic() - t0
                out.update(first_vote_s=round(first_vote, 2), pairs_generated_at_first_vote=st["generated"])
            if all_votes is None and st["judged"] == a.prompts:
                all_votes = time.monotonic() - t0
            if nxt is not None and nxt.status_code == 200:
                p = nxt.json()
                if first is None:
                    first = time.monotonic() - t0
                    out.update(first_pair_s=round(first, 2), pairs_generated_then=st["generated"],
                               outputs_made_then=st["progress"].get("generated"))
                    print(json.dumps({"first_pair": out}), file=sys.stderr, flush=True)
                c.post(f"/v1/runs/{rid}/labels", json={"lease_id": p["lease_id"], "pair_id": p["pair_id"],
                                                       "annotator": "bench", "verdict": "tie"}).raise_for_status()
                labels_while_generating += st["status"] == "generating"
            elif nxt is not None and nxt.headers.get("Retry-After"):
                waits += 1
            if st["status"] == "ready":
                out.update(ready_s=round(time.monotonic() - t0, 2), labels=st["labels"], decision=st["decision"],
                           pairs_generated=st["generated"])
                break
            time.sleep(0.25)
        out.update(all_outputs_s=None if all_out is None else round(all_out, 2),
                   all_votes_s=None if all_votes is None else round(all_votes, 2),
                   answers_204_retry_after=waits, labels_while_generating=labels_while_generating)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
