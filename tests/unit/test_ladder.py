"""The checkpoint-ladder replay on real data (Vicuna-80, Guanaco 7B base → 13B → 33B → 65B), a few runs."""

from __future__ import annotations

import json

import pytest

from benchmarks import ladder


@pytest.fixture(scope="module")
def data():
    return ladder.load()


def test_ladder_items_cover_every_comparison(data):
    prompts, outputs, items = data
    assert len(prompts) == 80
    models = [ladder.BASE, *ladder.LADDER]
    for i, b in enumerate(models):
        for t in models[i + 1:]:
            assert sum(1 for (q, bb, tt) in items if (bb, tt) == (b, t)) == 80
    assert ladder.theta(items, "guanaco-7b", "guanaco-13b") == pytest.approx(0.46875)
    # orientation: the same pair seen from the other side has 1 - theta
    assert ladder.theta(items, "guanaco-13b", "guanaco-7b") == pytest.approx(1 - 0.46875)


def test_ladder_vs_best_on_real_data(data):
    # panel labels (mean of the recorded votes), margin 0: every comparison runs to its decision, and the
    # verdicts follow the full-pool theta: 13B worse than 7B (0.469), 33B better (0.508) and becomes the best,
    # 65B worse than the base (0.485) but better than the best, 33B (0.512), so it becomes the best.
    out = ladder.replay_once(*data, seed=0, alpha=0.05, margin=0.0, patience=2, budget_per_checkpoint=None,
                             method=None, annotator_kind="panel")
    sig = out["steps"][-1]["signal"]
    seq = [(c["checkpoint"], c["vs_base"]["decision"], c["vs_best"]["against"], c["decision"])
           for c in sig["checkpoints"]]
    assert seq == [("guanaco-13b", "worse", "base", "worse"), ("guanaco-33b", "better", "base", "better"),
                   ("guanaco-65b", "worse", "guanaco-33b", "better")]
    assert sig["best_checkpoint"] == "guanaco-65b" and not sig["stop"]
    alphas = [c["vs_base"]["alpha"] for c in sig["checkpoints"]]
    assert alphas[0] > alphas[1] > alphas[2]      # alpha-spending: 0.0304, 0.0076, 0.0034/2


def test_ladder_cli_prints_sequence_and_signal(capsys):
    assert ladder.main(["--runs", "2", "--json"]) == 0
    out = capsys.readouterr().out
    assert "guanaco-13b: vs base" in out and "signal: stop=" in out and "first stop signal" in out
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["runs"] == 2 and summary["wrong"] == 0
    assert ladder.main(["--runs", "0"]) == 2
