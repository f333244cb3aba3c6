import hashlib
import json

import numpy as np
import pytest
from test_judges_jury import ScriptedBackend
from typer.testing import CliRunner

import tiebreak.judges.models as jm
from tiebreak.judges.evaluate import cross_fitted_agreement, evaluate, load_items, verdict
from tiebreak.judges.jury import Judge


def _fake_preset(tmp_path, sha=None):
    parts = []
    for i, data in enumerate([b"GGUF" + b"x" * 100, b"y" * 50]):
        p = tmp_path / f"part{i}"
        p.write_bytes(data)
        parts.append(p)
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in parts)).hexdigest()
    return jm.Preset("fake", "fake.gguf", sha or digest, "models", parts=lambda: parts), digest


def test_resolve_preset_assembles_and_verifies(tmp_path, monkeypatch):
    pre, digest = _fake_preset(tmp_path)
    monkeypatch.setitem(jm.PRESETS, "fake", pre)
    monkeypatch.setenv("TIEBREAK_MODEL_DIR", str(tmp_path / "cache"))
    out = jm.resolve_preset("fake")
    assert out == tmp_path / "cache" / "fake.gguf" and jm.sha256_file(out) == digest
    assert jm.resolve_preset("fake") == out  # second call: verified stamp, no reassembly
    out.write_bytes(b"corrupt")  # a corrupted cache file is rebuilt
    assert jm.sha256_file(jm.resolve_preset("fake")) == digest


def test_resolve_preset_rejects_bad_sha(tmp_path, monkeypatch):
    pre, _ = _fake_preset(tmp_path, sha="0" * 64)
    monkeypatch.setitem(jm.PRESETS, "fake", pre)
    with pytest.raises(RuntimeError, match="sha256 mismatch"):
        jm.resolve_preset("fake", tmp_path / "c")
    assert not (tmp_path / "c" / "fake.gguf").exists()
    assert not list((tmp_path / "c").glob("*.part"))


def test_presets_and_unknown_names():
    assert set(jm.PRESETS) == {"qwen2.5-coder-1.5b", "qwen2.5-coder-0.5b", "gemma-3-270m-base"}
    with pytest.raises(ValueError, match="qwen2.5-coder-1.5b"):
        jm.resolve_preset("nope")
    with pytest.raises(ValueError, match="presets"):
        jm.resolve_model("nope")


def _write(tmp_path, rows):
    p = tmp_path / "d.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in rows))
    return p


def _row(i, label, good):
    a, b = ("GOOD a", "b") if good == "A" else ("a", "GOOD b")
    return {"id": str(i), "question": f"q{i}", "response_a": a, "response_b": b, "human_label": label}


def test_load_items_sample_and_errors(tmp_path):
    p = _write(tmp_path, [_row(i, "A", "A") for i in range(10)] + [{"id": "x", "question": None}])
    assert len(load_items(p)) == 10
    s = load_items(p, 4, seed=1)
    assert len(s) == 4 and s == load_items(p, 4, seed=1)
    with pytest.raises(ValueError, match="not found"):
        load_items(tmp_path / "missing.jsonl")
    (tmp_path / "bad.jsonl").write_text("{oops\n")
    with pytest.raises(ValueError, match="not JSON"):
        load_items(tmp_path / "bad.jsonl")


def test_evaluate_metrics_on_scripted_judge(tmp_path):
    rows = [_row(i, lab, good) for i, (lab, good) in enumerate(
        [("A", "A"), ("B", "B"), ("B", "A"), ("tie", "B")] * 3)]
    j1, j2 = Judge(ScriptedBackend(bias=0.5)), Judge(ScriptedBackend(), mode="pointwise")
    res = evaluate(rows, [j1, j2], injection_limit=4, progress=False)
    m = res["judges"]["scripted"]
    assert m["n"] == 12 and m["n_decisive"] == 9
    assert m["decisive_agreement"] == pytest.approx(6 / 9)
    assert m["three_way_agreement"] == pytest.approx(6 / 12)
    assert m["swap_consistency"] == 1.0 and m["p_pick_a"] == 0.5
    assert m["injection_flip_rate"] == 0.0  # the scripted judge ignores injected text
    assert res["judges"]["scripted:pointwise"]["swap_consistency"] is None
    assert res["ensemble"]["decisive_agreement"] == pytest.approx(6 / 9)
    assert res["baselines"]["longer_wins_decisive_agreement"] == pytest.approx(6 / 9)
    assert verdict(float("nan")) == "tie" and verdict(0.6) == "B"


def test_cross_fitted_agreement_learns_a_flip():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 1))
    y = (x[:, 0] < 0).astype(int)  # votes are anti-correlated: calibration learns the sign
    assert cross_fitted_agreement(x, y) > 0.9


def test_cli_bad_input_exits_2_without_traceback(tmp_path):
    import typer

    from tiebreak.services.commands.judge_eval import judge_eval

    app = typer.Typer()
    app.command("judge-eval")(judge_eval)
    app.command("noop")(lambda: None)
    r = CliRunner().invoke(app, ["judge-eval", str(tmp_path / "none.jsonl")])
    assert r.exit_code == 2 and "file not found" in r.output and "Traceback" not in r.output
    p = _write(tmp_path, [_row(0, "A", "A")])
    r = CliRunner().invoke(app, ["judge-eval", str(p), "--judges", "gpt-9"])
    assert r.exit_code == 2 and "valid choices" in r.output
    r = CliRunner().invoke(app, ["judge-eval", str(p), "--limit", "0"])
    assert r.exit_code == 2 and "--limit" in r.output
