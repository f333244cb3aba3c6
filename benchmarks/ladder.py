"""Checkpoint ladder replay on real data (issue 5): the Guanaco family on Vicuna-80 as successive checkpoints.

base = guanaco-7b; checkpoints = guanaco-13b, guanaco-33b, guanaco-65b submitted in that order to one
experiment (services.experiments.ExperimentService over in-process runs, no server). Every comparison the
experiment asks for (a checkpoint vs the base, vs the best checkpoint so far) exists among the 32 recorded model
pairs of ``vicuna80_qlora_prd.jsonl``, 80 questions each, oriented so that "tuned" is the later checkpoint.
Judges = the recorded GPT-4 verdicts in both presentation orders mapped to P(tuned better) (tuned → 1, base → 0,
tie → ½, null → missing). The simulated annotator answers each request with one vote drawn at random from the
item's ``human_votes`` (the engine runs with ``label_noise=True``, so each comparison's estimand is the
full-pool mean of the items' mean votes, as in ``tiebreak replay``). A checkpoint is submitted when the previous one's comparisons have finished (a trainer
that waits for each verdict); after each checkpoint the signal is printed.

    python -m benchmarks.ladder [--runs R] [--seed S] [--alpha A] [--margin M] [--patience P]
                                [--budget-per-checkpoint N] [--method classical|ppi|active]
                                [--annotator vote|panel] [--json] [--report PATH]

``--annotator panel`` answers with the mean of the pair's recorded votes instead (3 crowd workers per pair,
``labels_per_pair=3`` in the service): no vote noise, so the same comparisons can actually decide.
``--report PATH`` writes the experiment report (services/experiment_report.py, the page
``GET /v1/experiments/{exp}/report`` serves) of the first run to PATH.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from tiebreak.services.experiments import ExperimentService, LocalRuns

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "vicuna80_qlora_prd.jsonl"
if not DATA.exists():  # a checkout elsewhere: the shared data folder next to it, or $TIEBREAK_DATA
    import os
    DATA = Path(os.environ.get("TIEBREAK_DATA", "/work/shared/data")) / "vicuna80_qlora_prd.jsonl"
BASE = "guanaco-7b"
LADDER = ("guanaco-13b", "guanaco-33b", "guanaco-65b")


def _p(verdict: str | None, tuned_is_a: bool) -> float:
    if verdict is None:
        return math.nan
    if verdict == "tie":
        return 0.5
    return 1.0 if (verdict == "A") == tuned_is_a else 0.0


def load(path: Path = DATA) -> tuple[list[dict], dict[str, dict[str, str]], dict[tuple[str, str, str], dict]]:
    """prompts, outputs[model][qid], items[(qid, base_model, tuned_model)] = {judges: {name: P}, votes: [y]}."""
    models = {BASE, *LADDER}
    prompts: dict[str, str] = {}
    outputs: dict[str, dict[str, str]] = collections.defaultdict(dict)
    items: dict[tuple[str, str, str], dict] = {}
    with open(path) as f:
        for line in f:
            d = json.loads(line)
            a, b = d["model_a"], d["model_b"]
            if a not in models or b not in models:
                continue
            q = d["id"].split("|")[0]
            prompts[q] = d["question"]
            outputs[a][q], outputs[b][q] = d["response_a"], d["response_b"]
            for base, tuned in ((a, b), (b, a)):
                tuned_is_a = tuned == a
                items[(q, base, tuned)] = {
                    "judges": {j: _p(v, tuned_is_a) for j, v in sorted(d["judges"].items())},
                    "votes": [_p(v, tuned_is_a) for v in d["human_votes"]],
                }
    plist = [{"id": q, "text": prompts[q]} for q in sorted(prompts, key=int)]
    return plist, outputs, items


def theta(items: dict, base: str, tuned: str) -> float:
    return float(np.mean([np.mean(v["votes"]) for (q, b, t), v in items.items() if b == base and t == tuned]))


def replay_once(prompts, outputs, items, seed: int, alpha: float, margin: float, patience: int,
                budget_per_checkpoint: int | None, method: str | None, annotator_kind: str = "vote",
                carry_calibration: bool = True) -> dict:
    rng = np.random.default_rng(seed)
    model_of = {"base": BASE, **{m: m for m in LADDER}}

    def key(p: dict) -> tuple[str, str, str]:
        return (p["id"], model_of[p["base_ref"]], model_of[p["tuned_ref"]])

    def voter(pairs: list[dict]) -> list[dict[str, float]]:
        return [{j: v for j, v in items[key(p)]["judges"].items() if not math.isnan(v)} for p in pairs]

    def annotator(p: dict) -> float:
        votes = items[key(p)]["votes"]
        return float(np.mean(votes)) if annotator_kind == "panel" else float(rng.choice(votes))

    # "vote": a label is one random vote of the pair, and the engine's label_noise mode targets the mean-vote
    # theta; "panel": a label is the mean of the pair's recorded votes (labels_per_pair = 3), noise-free.
    runs = LocalRuns(voter=voter, seed=seed, method=method, label_noise=annotator_kind == "vote")
    svc = ExperimentService(runs, notifier=lambda url, payload: None, validate_judges=False)
    judges = [] if method == "classical" else ["gpt-4(a_first)", "gpt-4(b_first)"]
    exp = svc.create_experiment({"name": "guanaco ladder", "prompts": prompts, "judges": judges,
                                 "base": {"outputs": outputs[BASE]}, "alpha": alpha, "margin": margin,
                                 "patience": patience, "budget_per_checkpoint": budget_per_checkpoint,
                                 "carry_calibration": carry_calibration})
    steps = []
    for m in LADDER:
        res = svc.add_checkpoint(exp, {"checkpoint": m, "outputs": outputs[m]})
        runs.annotate(annotator, res["runs"])
        sig = svc.signal(exp)
        steps.append({"checkpoint": m, "signal": sig})
    return {"experiment": exp, "steps": steps, "service": svc}


def write_report(out: dict, path: Path, a: argparse.Namespace) -> Path:
    """The experiment report of one replay (``replay_once``'s result) as a self-contained HTML file."""
    from tiebreak.services.experiment_report import experiment_report_data, render_experiment_report

    data = experiment_report_data(out["service"], out["experiment"], run_href=None, notes=[
        f"Replay of recorded labels (benchmarks/ladder.py): base {BASE}, checkpoints {', '.join(LADDER)} on the "
        f"{len(out['service'].get(out['experiment'])['prompts'])} Vicuna-80 questions; seed {a.seed}, annotator "
        f"{a.annotator}, method {a.method or 'active'} with the recorded GPT-4 verdicts as judges."])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_experiment_report(data))
    print(f"report: {path.resolve()}")
    return path


def _fmt_cmp(c: dict) -> str:
    return (f"{c['decision']:<10} θ̂={c['estimate']:.3f} [{c['lower']:.3f}, {c['upper']:.3f}] "
            f"{c['labels']:>2} labels α={c['alpha']:.4f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--alpha", type=float, default=0.05)
    ap.add_argument("--margin", type=float, default=0.1)
    ap.add_argument("--patience", type=int, default=2)
    ap.add_argument("--budget-per-checkpoint", type=int, default=None)
    ap.add_argument("--method", choices=("classical", "ppi", "active"), default=None,
                    help="default: active with the recorded GPT-4 judges")
    ap.add_argument("--annotator", choices=("vote", "panel"), default="vote",
                    help="vote: one recorded vote drawn per request; panel: the mean of the pair's recorded votes")
    ap.add_argument("--no-carry", action="store_true",
                    help="each checkpoint's runs start without the earlier checkpoints' judge calibration "
                         "(the experiment option carry_calibration=false)")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--json", action="store_true", help="one JSON summary line at the end")
    ap.add_argument("--report", type=Path, default=None, metavar="PATH",
                    help="write the first run's experiment report (self-contained HTML) to PATH")
    a = ap.parse_args(argv)
    if a.runs < 1:
        print("error: --runs must be >= 1", file=sys.stderr)
        return 2
    if not a.data.exists():
        print(f"error: --data {a.data} does not exist", file=sys.stderr)
        return 2
    t0 = time.time()
    prompts, outputs, items = load(a.data)
    print(f"Vicuna-80 Guanaco ladder: base {BASE}, checkpoints {' → '.join(LADDER)}; {len(prompts)} prompts; "
          f"alpha={a.alpha} margin={a.margin} patience={a.patience} method={a.method or 'active'} "
          f"annotator={a.annotator} carry_calibration={not a.no_carry} "
          f"budget/checkpoint={a.budget_per_checkpoint}")
    print("full-pool θ (mean human vote): " + ", ".join(
        f"{t} vs {b}: {theta(items, b, t):.3f}" for b, t in
        [(BASE, "guanaco-13b"), (BASE, "guanaco-33b"), (BASE, "guanaco-65b"),
         ("guanaco-13b", "guanaco-33b"), ("guanaco-13b", "guanaco-65b"), ("guanaco-33b", "guanaco-65b")]))
    seqs: collections.Counter = collections.Counter()
    first_stop: collections.Counter = collections.Counter()
    final_best: collections.Counter = collections.Counter()
    labels_total = []
    labels_by_ck: list[dict[str, int]] = []
    wrong = 0
    for r in range(a.runs):
        out = replay_once(prompts, outputs, items, a.seed + r, a.alpha, a.margin, a.patience,
                          a.budget_per_checkpoint, a.method, a.annotator, not a.no_carry)
        last = out["steps"][-1]["signal"]
        seq = tuple(f"{c['checkpoint'].split('-')[1]}:{c['vs_base']['decision']}/{c['decision']}"
                    for c in last["checkpoints"])
        seqs[seq] += 1
        stop_at = next((f"after {s['checkpoint']} ({s['signal']['reason']})" for s in out["steps"]
                        if s["signal"]["stop"]), "never")
        first_stop[stop_at] += 1
        final_best[last["best_checkpoint"]] += 1
        labels_total.append(last["labels"])
        labels_by_ck.append({c["checkpoint"]: c["vs_base"]["labels"] + (c["vs_best"]["labels"] if
                             c["vs_best"]["against"] != "base" else 0) for c in last["checkpoints"]})
        for c in last["checkpoints"]:
            for slot in ("vs_base", "vs_best"):
                v = c[slot]
                ref = BASE if v["against"] == "base" else v["against"]
                th = theta(items, ref, c["checkpoint"])
                if (v["decision"] == "better" and th <= 0.5) or (v["decision"] == "worse" and th >= 0.5):
                    wrong += 1
        if r == 0 and a.report is not None:
            write_report(out, a.report, a)
        if r == 0:
            print(f"\nrun 1 (seed {a.seed}):")
            for s in out["steps"]:
                c = s["signal"]["checkpoints"][-1]
                print(f"  {s['checkpoint']}: vs base {_fmt_cmp(c['vs_base'])}")
                if c["vs_best"]["against"] != "base":
                    print(f"  {' ' * len(s['checkpoint'])}  vs {c['vs_best']['against']} {_fmt_cmp(c['vs_best'])}")
                sg = s["signal"]
                print(f"  {' ' * len(s['checkpoint'])}  signal: stop={sg['stop']} reason={sg['reason']} "
                      f"best={sg['best_checkpoint']} — {sg['message']}")
    print(f"\nover {a.runs} runs (seeds {a.seed}..{a.seed + a.runs - 1}):")
    print("  verdict sequences (checkpoint: vs base / vs best-so-far):")
    for seq, n in seqs.most_common(8):
        print(f"    {n:>4}  {'  '.join(seq)}")
    print("  first stop signal: " + ", ".join(f"{k} ×{n}" for k, n in first_stop.most_common()))
    print("  best checkpoint at the end: " + ", ".join(f"{k} ×{n}" for k, n in final_best.most_common()))
    print(f"  human labels per experiment: mean {np.mean(labels_total):.1f}, median {np.median(labels_total):.0f} "
          f"(3 checkpoints, 5 comparisons × 80 pairs = 400 if exhaustive)")
    per_ck = {m: float(np.mean([x[m] for x in labels_by_ck])) for m in LADDER}
    print("  human labels per checkpoint (its runs): " + ", ".join(f"{m} {v:.1f}" for m, v in per_ck.items()))
    print(f"  better/worse verdicts against the full-pool θ's sign: {wrong} wrong; {time.time() - t0:.1f} s")
    if a.json:
        print(json.dumps({"summary": True, "runs": a.runs, "sequences": {" ".join(k): v for k, v in seqs.items()},
                          "first_stop": dict(first_stop), "best": {str(k): v for k, v in final_best.items()},
                          "mean_labels": float(np.mean(labels_total)), "wrong": wrong,
                          "mean_labels_per_checkpoint": per_ck}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
