"""judge-eval's calibrated figures: the sampler's calibration, cross-fitted; explained variance; CPU cost."""

import json
import math

import numpy as np
import pytest
from test_judges_jury import ScriptedBackend
from typer.testing import CliRunner

from tiebreak.judges.cache import MemoryVoteCache
from tiebreak.judges.evaluate import RecordedJudge, cross_fitted_calibration, evaluate, load_items
from tiebreak.judges.jury import Judge, _logit_mean, judges_from_names


def test_explained_variance_matches_theory_for_a_calibrated_judge():
    # vote = P(Y=1 | x) exactly: the best g is the vote itself, so R² = Var(p) / Var(Y)
    rng = np.random.default_rng(1)
    p = rng.uniform(0.1, 0.9, 4000)
    y = (rng.random(4000) < p).astype(float)
    cf = cross_fitted_calibration(p[:, None], y)
    theory = np.var(p) / (np.var(p) + np.mean(p * (1 - p)))
    assert cf.explained_variance == pytest.approx(theory, abs=0.03)
    # decisive agreement of g > ½ equals the Bayes rate E[max(p, 1-p)]
    assert cf.decisive_agreement == pytest.approx(np.mean(np.maximum(p, 1 - p)), abs=0.03)


def test_noise_judge_explains_nothing_and_anticorrelated_judge_is_flipped():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 600).astype(float)
    noise = rng.random((600, 1))
    assert cross_fitted_calibration(noise, y).explained_variance < 0.02
    anti = np.where(y == 1, 0.3, 0.7)[:, None] + rng.normal(0, 0.05, (600, 1))
    cf = cross_fitted_calibration(anti, y)
    assert cf.decisive_agreement > 0.95 and cf.explained_variance > 0.5


def test_cross_fitting_never_uses_the_item_itself():
    # a "judge" that is the label itself on one item and noise elsewhere cannot predict that item
    y = np.array([0.0, 1.0] * 10)
    votes = np.full((20, 1), 0.5)
    votes[0, 0] = 0.0
    cf = cross_fitted_calibration(votes, y, folds=5)
    assert np.isfinite(cf.predictions).all() and cf.predictions[0] == pytest.approx(0.5, abs=0.1)
    assert cross_fitted_calibration(votes[:6], y[:6], folds=5).explained_variance is None  # too few items


def test_pairwise_vote_is_logit_mean_of_orders_so_a_collapsed_judge_keeps_its_spread():
    # a judge that picks A in both orders with P(A) 0.99 vs 0.995: plain mean ≈ 0.5025, logit mean ≈ 0.586
    p1, p2 = 1 - 0.99, 0.995
    assert _logit_mean([p1, p2]) == pytest.approx(1 / (1 + math.exp(-(math.log(0.995 / 0.005)
                                                                     - math.log(0.99 / 0.01)) / 2)))
    assert _logit_mean([p1, p2]) > 0.58 and _logit_mean([0.3, 0.3]) == pytest.approx(0.3)
    assert math.isnan(_logit_mean([]))
    v = Judge(ScriptedBackend(bias=4.0, margin=0.4)).vote("q", "bad", "GOOD")
    assert v.picks_a == (True, True) and v.p_tuned_better > 0.55  # collapsed, yet clearly > ½


def test_cpu_seconds_recorded_and_served_from_cache():
    cache = MemoryVoteCache()
    j = Judge(ScriptedBackend(), mode="pointwise")
    v1 = j.vote("q", "a", "GOOD", cache=cache)
    v2 = j.vote("q", "a", "GOOD", cache=cache)
    assert v1.cpu_seconds >= 0 and v2.cached and v2.cpu_seconds == pytest.approx(v1.cpu_seconds)


def _row(i, label, a="short", b="a longer answer", judges=None):
    return {"id": str(i), "question": f"q{i}", "response_a": a, "response_b": b, "human_label": label,
            "judges": judges or {}}


def test_balanced_sample(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text("\n".join(json.dumps(_row(i, lab)) for i, lab in enumerate("AAAAAAABBBtt")))
    items = load_items(p, 5, seed=3, balanced=True)
    assert sorted(r["human_label"] for r in items) == ["A", "A", "B", "B"]
    assert len(load_items(p, balanced=True)) == 6
    with pytest.raises(ValueError, match="balanced"):
        load_items(p, 1, balanced=True)


def test_recorded_judge_reads_both_orders_and_evaluate_reports_new_keys():
    rows = [_row(i, lab, judges={"gpt-4(a_first)": rec, "gpt-4(b_first)": rec, "gpt-4o": "A"})
            for i, (lab, rec) in enumerate([("A", "A"), ("B", "B"), ("B", "tie"), ("A", None)] * 5)]
    rj = RecordedJudge("gpt-4")
    res = evaluate(rows, [rj, *judges_from_names(["feature:length"])], injection_limit=4, progress=False)
    m = res["judges"]["recorded:gpt-4"]
    assert m["decisive_agreement"] == 1.0 and m["missing"] == 5  # "gpt-4o" is another judge
    for key in ("decisive_agreement_calibrated", "explained_variance", "cpu_seconds_per_pair",
                "explained_variance_per_cpu_second"):
        assert key in m and key in res["ensemble"]
    assert res["calibration"]["family"].startswith("tiebreak.sampler.calibration")
    assert set(res["ensemble"]["calibration_weights"]) == {"recorded:gpt-4", "feature:length"}
    assert res["judges"]["feature:length"]["decisive_agreement"] == 0.5  # b is always longer


def test_cli_json_keeps_documented_keys_and_adds_new(tmp_path):
    import typer

    from tiebreak.services.commands.judge_eval import judge_eval

    p = tmp_path / "d.jsonl"
    p.write_text("\n".join(json.dumps(_row(i, "AB"[i % 2], b="x" * (1 + 10 * (i % 2)))) for i in range(20)))
    app = typer.Typer()
    app.command("judge-eval")(judge_eval)
    app.command("noop")(lambda: None)
    r = CliRunner().invoke(app, ["judge-eval", str(p), "--judges", "features", "--json", "--no-cache"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.output.strip().splitlines()[-1])
    m = res["judges"]["feature:length"]
    assert {"decisive_agreement", "three_way_agreement", "seconds_per_pair", "injection_flip_rate",
            "decisive_agreement_calibrated", "explained_variance", "cpu_seconds_per_pair"} <= set(m)
    assert m["decisive_agreement"] == 1.0 and m["explained_variance"] > 0.5  # ridge-shrunk on 16 training items
    r = CliRunner().invoke(app, ["judge-eval", str(p), "--judges", "feature:nope"])
    assert r.exit_code == 2 and "unknown feature" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(app, ["judge-eval", str(p), "--judges", "features", "--folds", "1"])
    assert r.exit_code == 2 and "--folds" in r.output
    r = CliRunner().invoke(app, ["judge-eval", str(p), "--judges", "features", "--injection", "nope"])
    assert r.exit_code == 2 and "--injection" in r.output and "evaluator" in r.output
    r = CliRunner().invoke(app, ["judge-eval", str(p), "--judges", "features", "--json", "--no-cache",
                                 "--injection", "evaluator", "--injection-limit", "20"])
    res = json.loads(r.output.strip().splitlines()[-1])
    assert res["injection"] == "evaluator" and res["baselines"]["responses_with_judge_directed_text"] == 0
    assert res["judges"]["feature:length"]["injection_flip_rate"] == 0.0  # the note to the evaluator is removed


def test_rubric_mode_asks_each_question_with_a_shared_prefix_and_reports_per_question_votes():
    seen = []

    class Rec(ScriptedBackend):
        def choice_logprobs(self, prompt, choices):
            seen.append(prompt[-1]["content"])
            return super().choice_logprobs(prompt, choices)

    j = Judge(Rec(), mode="rubric")
    v = j.vote("q", "bad", "GOOD")
    assert j.name == "scripted:rubric" and v.p_tuned_better > 0.9
    assert [q for q, _ in v.extra] == list(j.rubric) and all(p > 0.9 for _, p in v.extra)
    per_response = len(j.rubric)
    assert len(seen) == 2 * per_response
    prefix = seen[0].split("<<<END RESPONSE>>>")[0]
    assert all(s.startswith(prefix) for s in seen[:per_response])  # only the question differs
    res = evaluate([_row(i, "AB"[i % 2], "bad", "GOOD" if i % 2 else "bad") for i in range(10)], [j],
                   injection_limit=0, progress=False)
    assert set(res["ensemble"]["calibration_weights"]) == {"scripted:rubric", *(f"scripted:rubric:{q}"
                                                                                 for q in j.rubric)}
    assert res["judges"]["scripted:rubric"]["decisive_agreement"] == 1.0


def test_long_question_keeps_its_last_turn_and_long_responses_are_marked_truncated():
    from tiebreak.judges.jury import _clip_question

    q = "Human: " + "x" * 3000 + " Human: the actual question?"
    c = _clip_question(q, 300)
    assert c.startswith("Human: x") and c.endswith("the actual question?") and "…[cut]…" in c
    assert len(c) <= 300 + len(" …[cut]… ") and _clip_question("short", 300) == "short"
    user = Judge(ScriptedBackend(), max_chars=100).pointwise_prompt(q, "y" * 500, "overall")[-1]["content"]
    assert "the actual question?" in user and "y" * 100 + " …[truncated]" in user


def test_scalar_responses_are_read_as_text(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text(json.dumps({**_row(0, "A"), "response_a": True}) + "\n" + json.dumps(_row(1, "B")))
    items = load_items(p)
    assert items[0]["response_a"] == "True"
    assert judges_from_names(["feature:length"])[0].vote("q", items[0]["response_a"], "x").p_tuned_better < 0.5
