"""Derive the demo's pools (services/demo_data/*.jsonl) from ../shared/data. Run from the repo root:

    python services/demo_data/derive.py            # writes both files below
    python services/demo_data/derive.py --check    # rebuilds them in memory and fails if a file differs

* ``pandalm_fixed_theta.jsonl`` (the default demo): a "base vs tuned" pool of PANDALM_N pairs of the PandaLM test
  set (WeOpenML/PandaLM 3871806, Apache-2.0; the instruction-following answers of five 7B models, each pair
  labelled by three annotators, with GPT-3.5-turbo's and PandaLM-7B's verdicts recorded by the PandaLM authors).
  A constructed pool, not one model against another: "base" is the pair's first response, "tuned" its second,
  and the pairs are drawn so that the annotators' plurality prefers "tuned" on exactly PANDALM_THETA of them.
  Only pairs whose plurality is decisive are eligible (a tie plurality has no side; 6 pairs whose response is not
  text are left out too), and every pair carries that
  plurality as its one crowd answer — the labels the recorded judges are scored against in docs/benchmarks.md
  ("Fixed-theta PandaLM pools"). The draw: a seeded numpy Generator picks round(θ·n) of the "tuned"-preferred
  and n − round(θ·n) of the "base"-preferred pairs without replacement, then shuffles them together.
* ``vicuna80_guanaco7b_vs_gpt4.jsonl`` (``tiebreak demo --data vicuna80``): the 80 Vicuna-80 questions answered
  by Guanaco-7B ("base") and GPT-4 ("tuned") (artidoro/qlora 7f4e95a + bcdnlp/PRD 35fb99e, MIT), every crowd vote
  kept, GPT-4's recorded verdicts in both presentation orders.

Schema of a row: id, source_id, category, prompt, base, tuned, human_votes (list of "tuned"/"base"/"tie"),
recorded_judges ({name: "tuned"/"base"/"tie"/None}); PandaLM rows also keep annotator_votes (the three raw
votes, oriented the same way) and base_model/tuned_model (which 7B models wrote the two answers).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

SHARED = Path("../shared/data")
HERE = Path("services/demo_data")
PANDALM_FILE, VICUNA_FILE = "pandalm_fixed_theta.jsonl", "vicuna80_guanaco7b_vs_gpt4.jsonl"
# chosen by measurement (docs/benchmarks.md, "Issue 10: the demo's pool"): labels-only decides in ~140-160
# labels on average on pools of this size and θ, the recorded judges' votes explain ~43-45 % of the label variance
PANDALM_THETA, PANDALM_N, PANDALM_SEED = 0.6, 600, 1
SIDE = {"A": "base", "B": "tuned", "tie": "tie"}   # response_a is "base", response_b "tuned"


def fixed_theta_indices(labels: list[str], theta: float, n: int, seed: int) -> list[int]:
    """Indices of n items, round(θ·n) with label "B" and the rest with label "A", drawn without replacement by
    ``np.random.default_rng(seed)``, in a random order; a clear error when the file has too few of either."""
    n_b = round(theta * n)
    b_idx = [i for i, lab in enumerate(labels) if lab == "B"]
    a_idx = [i for i, lab in enumerate(labels) if lab == "A"]
    if n_b > len(b_idx) or n - n_b > len(a_idx):
        raise SystemExit(f"error: θ = {theta} on {n} pairs needs {n_b} B-preferred and {n - n_b} A-preferred "
                         f"pairs; the file has {len(b_idx)} and {len(a_idx)}")
    rng = np.random.default_rng(seed)
    chosen = np.concatenate([rng.choice(b_idx, n_b, replace=False), rng.choice(a_idx, n - n_b, replace=False)])
    return [int(i) for i in rng.permutation(chosen)]


def pandalm_rows(theta: float = PANDALM_THETA, n: int = PANDALM_N, seed: int = PANDALM_SEED) -> list[dict]:
    src = [json.loads(line) for line in open(SHARED / "pandalm_testset.jsonl")]
    # 6 pairs hold a JSON boolean where a response should be (the source's YAML read "True" as a bool): not text,
    # left out by giving them no side; empty responses (a model that answered nothing) are real and stay
    # human_label is the file's plurality of the three votes ("tie" when the top count is shared; its README)
    labels = [r["human_label"] if isinstance(r["response_a"], str) and isinstance(r["response_b"], str)
              else "unusable" for r in src]
    out = []
    for i in fixed_theta_indices(labels, theta, n, seed):
        r = src[i]
        out.append({"id": f"pandalm-{r['id']}", "source_id": r["id"],
                    "category": (r.get("meta") or {}).get("motivation_app"), "prompt": r["question"],
                    "base": r["response_a"], "tuned": r["response_b"], "human_votes": [SIDE[labels[i]]],
                    "annotator_votes": [SIDE[v] for v in r["human_votes"]],
                    "base_model": r["model_a"], "tuned_model": r["model_b"],
                    "recorded_judges": {k: (SIDE[v] if v else None) for k, v in sorted(r["judges"].items())}})
    return out


def vicuna_rows() -> list[dict]:
    rows = [json.loads(line) for line in open(SHARED / "vicuna80_qlora_prd.jsonl")]
    items = [r for r in rows if {r["model_a"], r["model_b"]} == {"guanaco-7b", "gpt4"}]
    items.sort(key=lambda r: r["meta"]["question_id"])
    out = []
    for r in items:
        tuned_is_b = r["model_b"] == "gpt4"
        m = {"A": "base" if tuned_is_b else "tuned", "B": "tuned" if tuned_is_b else "base", "tie": "tie"}
        base, tuned = (r["response_a"], r["response_b"]) if tuned_is_b else (r["response_b"], r["response_a"])
        rec = {k.replace("(a_first)", "(order 1)").replace("(b_first)", "(order 2)"): (m[v] if v else None)
               for k, v in sorted(r["judges"].items()) if k.startswith("gpt-4")}
        out.append({"id": f"vicuna80-q{r['meta']['question_id']}", "source_id": r["id"],
                    "category": r["meta"].get("category"), "prompt": r["question"], "base": base, "tuned": tuned,
                    "human_votes": [m[v] for v in r["human_votes"]], "recorded_judges": rec})
    return out


def as_jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="fail if a packaged file differs from a fresh derivation")
    a = ap.parse_args()
    stale = []
    for name, rows in ((PANDALM_FILE, pandalm_rows()), (VICUNA_FILE, vicuna_rows())):
        path, text = HERE / name, as_jsonl(rows)
        if a.check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
        theta = np.mean([np.mean([{"tuned": 1, "base": 0, "tie": 0.5}[v] for v in r["human_votes"]]) for r in rows])
        print(json.dumps({"file": str(path), "pairs": len(rows), "theta": round(float(theta), 4)}))
    if stale:
        sys.exit(f"error: {', '.join(stale)} differ from a fresh derivation; run python services/demo_data/derive.py")


if __name__ == "__main__":
    main()
