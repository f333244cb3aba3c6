"""Arena with slices (for the Slices benchmark of docs/benchmarks.md): one model against the field, each
battle's slice = the opponent it met.

Arena items carry no prompt text, so the slices are built from what is recorded and fixed before any label is
seen: the opponent model (``vs-<model>``, for opponents with at least --min-battles battles; the others are in
no slice) and ``judges-split`` (the three LLM judges did not all give the same verdict). Every battle of
--model becomes an item "field" (A) vs MODEL (B), votes and judge verdicts flipped where MODEL was A, so
`tiebreak replay OUT --base field --tuned MODEL` asks "is MODEL better than the field?" and, per slice,
"better than this opponent?".

    python -m benchmarks.arena_slices ../shared/data/chatbot_arena_ppr.jsonl /tmp/arena_vicuna13b.jsonl \
        --model vicuna-13b --min-battles 250
"""

from __future__ import annotations

import argparse
import json
from collections import Counter

FLIP = {"A": "B", "B": "A", "tie": "tie"}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("--model", default="vicuna-13b")
    ap.add_argument("--min-battles", type=int, default=250)
    args = ap.parse_args(argv)
    rows = []
    with open(args.src) as fh:
        for line in fh:
            if line.strip():
                r = json.loads(line)
                if args.model in (r["model_a"], r["model_b"]) and r["model_a"] != r["model_b"]:
                    rows.append(r)
    opponent = Counter(r["model_a"] if r["model_b"] == args.model else r["model_b"] for r in rows)
    counts: Counter[str] = Counter()
    with open(args.dst, "w") as out:
        for r in rows:
            flip = r["model_a"] == args.model
            opp = r["model_a"] if not flip else r["model_b"]
            judges = {k: (FLIP[v] if flip and v in FLIP else v) for k, v in (r.get("judges") or {}).items()}
            slices = [f"vs-{opp}"] if opponent[opp] >= args.min_battles else []
            if len({v for v in judges.values() if v is not None}) > 1:
                slices.append("judges-split")
            counts.update(slices)
            item = dict(r, model_a="field", model_b=args.model, judges=judges, slices=slices,
                        human_votes=[FLIP[v] for v in r["human_votes"]] if flip else r["human_votes"])
            item["human_label"] = FLIP.get(r.get("human_label"), r.get("human_label")) if flip else r.get("human_label")
            out.write(json.dumps(item) + "\n")
    print(json.dumps({"items": len(rows), "slices": dict(sorted(counts.items()))}))


if __name__ == "__main__":
    main()
