"""GET /v1/experiments/{exp}/report and `tiebreak report --experiment` on the real service (uvicorn + embedded
Redis): the page shows every checkpoint, its links reach each run's report (over HTTP, or as files written
beside it by the CLI), and bad input gets a 4xx naming what is wrong."""

from __future__ import annotations

import re
from urllib.parse import urljoin

import httpx
import pytest
from experiment_server import ADMIN, label_runs, serve_app
from typer.testing import CliRunner

from tiebreak.services.cli import app as cli

pytestmark = pytest.mark.integration
PROMPTS = [{"id": f"q{i}", "text": f"question {i}"} for i in range(10)]
RANK = {"base": 0, "ck-1": 2, "ck-2": 1, "ck-3": 1}


def prefer(left: str, right: str) -> str:
    a, b = RANK[left.split(":")[0]], RANK[right.split(":")[0]]
    return "left" if a > b else "right" if b > a else "tie"


def test_experiment_report_over_http_and_cli(tmp_path):
    with serve_app(tmp_path / "redis") as (url, _app), \
            httpx.Client(base_url=url, headers={"Authorization": f"Bearer {ADMIN}"}) as c:
        exp = c.post("/v1/experiments", json={
            "name": "tiny <run>", "prompts": PROMPTS, "judges": [], "patience": 2,
            "base": {"outputs": {p["id"]: f"base: {p['id']}" for p in PROMPTS}}}).json()["experiment"]
        for ck in ("ck-1", "ck-2", "ck-3"):
            res = c.post(f"/v1/experiments/{exp}/checkpoints", json={
                "checkpoint": ck, "outputs": {p["id"]: f"{ck}: {p['id']}" for p in PROMPTS}}).json()
            label_runs(c, res["runs"], prefer)
        r = c.get(f"/v1/experiments/{exp}/report")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        html = r.text
        assert "tiny &lt;run&gt;" in html and "Stop training (regression)" in html
        assert html.index("ck-1") < html.index("ck-2") < html.index("ck-3")
        hrefs = re.findall(r'href="([^"]+)"', html)
        run_ids = {r["run_id"] for ck in c.get(f"/v1/experiments/{exp}").json()["checkpoints"]
                   for r in ck["runs"].values()}
        assert len(run_ids) == 5 and {h.split("/")[-2] for h in hrefs} == run_ids
        for h in hrefs:   # relative to the page's own address, each reaches that run's HTML report
            page = c.get(urljoin(str(r.url), h))
            assert page.status_code == 200 and "<svg" in page.text, h
        # bad input: a 4xx naming the field, never a 500
        e = c.get("/v1/experiments/exp_missing/report")
        assert e.status_code == 404 and "exp_missing" in e.text
        e = c.get(f"/v1/experiments/{exp}/report", params={"links": "zip"})
        assert e.status_code == 422 and "links" in e.text
        assert httpx.get(f"{url}/v1/experiments/{exp}/report").status_code == 401

        runner = CliRunner()
        out = tmp_path / "reports" / "exp.html"
        res = runner.invoke(cli, ["report", "--experiment", exp, "--server", url, "--token", ADMIN, "-o", str(out)])
        assert res.exit_code == 0, res.output
        assert res.output.strip() == str(out.resolve())
        files = re.findall(r'href="([^"]+)"', out.read_text())
        assert len(files) == 5 and all((out.parent / f).read_text().startswith("<!DOCTYPE html>") for f in files)
        res = runner.invoke(cli, ["report", "--experiment", "exp_missing", "--server", url, "--token", ADMIN])
        assert res.exit_code == 2 and "exp_missing" in res.output
    res = runner.invoke(cli, ["report", "--server", url])
    assert res.exit_code == 2 and "exactly one" in res.output
