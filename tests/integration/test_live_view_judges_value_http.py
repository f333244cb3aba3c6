"""The demo's live view shows what each judge is worth, as the run's status says it over real HTTP: the share of
label variance its votes explain with its interval, labels saved, state, CPU-seconds, pairs voted."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from rich.console import Console

from support.serve_process import ServeProcess
from tiebreak.services.demo import LiveState, judges_value_rows, render_live

pytestmark = pytest.mark.integration
ADMIN = "admin-live-view-token"
H = {"Authorization": f"Bearer {ADMIN}"}


def test_live_view_shows_each_judges_value_from_the_status(tmp_path):
    rng = np.random.default_rng(3)
    truth = rng.random(120) < 0.6                       # tuned better on ~60 % of the pairs
    # an informative recorded judge and a coin flip: their measured values must differ in the view
    pairs = [{"id": f"p{i}", "prompt": f"question {i}", "base": f"base {i}", "tuned": f"tuned {i}",
              "judge_votes": {"recorded:good": float(np.clip(0.5 + (0.3 if truth[i] else -0.3) + rng.normal(0, 0.2),
                                                             0, 1)),
                              "recorded:coin": float(rng.random())}}
             for i in range(120)]
    with ServeProcess(tmp_path, admin_token=ADMIN, pipeline="off") as s, \
            httpx.Client(base_url=s.url, headers=H, timeout=30) as c:
        r = c.post("/v1/runs", json={"name": "live", "pairs": pairs, "seed": 2, "alpha": 0.001})
        assert r.status_code == 201, r.text
        rid = r.json()["run_id"]
        for _ in range(40):
            v = c.get(f"/v1/runs/{rid}/next", params={"annotator": "a"}).json()
            i = int(v["pair_id"][1:])
            tuned_left = v["left"].startswith("tuned")
            verdict = "left" if truth[i] == tuned_left else "right"
            assert c.post(f"/v1/runs/{rid}/labels", json={"pair_id": v["pair_id"], "lease_id": v["lease_id"],
                                                          "annotator": "a", "verdict": verdict}).status_code == 200
        st = c.get(f"/v1/runs/{rid}").json()
    values = st["judges_value"]
    assert set(values) == {"recorded:good", "recorded:coin", "jury"}
    rows = {r[0]: r for r in judges_value_rows(values)}
    good = values["recorded:good"]
    lo, hi = good["interval"]
    assert good["value"] > 0.3 > values["recorded:coin"]["value"]   # the informative judge is seen to be worth more
    assert rows["recorded:good"] == ["recorded:good", f"{good['value']:.3f} (90%: {lo:.3f}–{hi:.3f})",
                                     f"{good['labels_saved']:.1f}", "supplied", "0.0", str(good["pairs_voted"])]
    assert rows["jury"][3:] == ["—", "—", "—"]                 # the jury has no work of its own
    con = Console(record=True, width=160)
    con.print(render_live(LiveState(status=st)))
    text = con.export_text()
    assert "judges' value" in text and "label variance explained" in text and "CPU-s" in text
    for name in ("recorded:good", "recorded:coin"):
        assert name in text and rows[name][1] in text
