"""The Guanaco ladder (benchmarks/ladder.py on the recorded Vicuna-80 labels) rendered as an experiment report and
looked at in headless Chromium (Debian chromium + chromium-driver, `make setup-browser`): the bars sit where
their decisions say, in training order, the best checkpoint is marked, nothing overflows, and the screenshot
has the decision colours inside the chart."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from test_service_browser import browser  # noqa: F401 - the headless Chromium fixture

from benchmarks import ladder

pytestmark = pytest.mark.integration
GREEN, RED = (0x1A, 0x7F, 0x37), (0xC0, 0x36, 0x2C)     # services.report._COLORS better / worse

GEOMETRY = """
const r = e => e.getBoundingClientRect();
const half = r(document.querySelector('svg.exp line.half'));
return {
  overflow: document.documentElement.scrollWidth - document.documentElement.clientWidth,
  dpr: window.devicePixelRatio,
  half: half.top,
  chart: (b => [b.left, b.top, b.right, b.bottom])(r(document.querySelector('svg.exp'))),
  best: (b => (b.left + b.right) / 2)(r(document.querySelector('svg.exp text.best'))),
  bars: [...document.querySelectorAll('svg.exp line.iv')].map(e => ({
    checkpoint: e.dataset.checkpoint, decision: e.dataset.decision,
    kind: e.classList.contains('iv-best') ? 'best' : 'base',
    top: r(e).top, bottom: r(e).bottom, x: (r(e).left + r(e).right) / 2})),
};
"""


def test_ladder_experiment_report_in_chromium(tmp_path, browser):  # noqa: F811
    from PIL import Image

    page = tmp_path / "ladder.html"
    # panel labels, margin 0: every comparison decides (the sequence tests/unit/test_ladder.py checks)
    assert ladder.main(["--runs", "1", "--annotator", "panel", "--margin", "0", "--report", str(page)]) == 0
    browser.set_window_size(1000, 1500)
    browser.get(page.as_uri())
    g = browser.execute_script(GEOMETRY)
    assert g["overflow"] <= 0, "the page scrolls sideways"
    bars = [(b["checkpoint"], b["kind"], b["decision"]) for b in g["bars"]]
    assert bars == [("guanaco-13b", "base", "worse"), ("guanaco-33b", "base", "better"),
                    ("guanaco-65b", "base", "worse"), ("guanaco-65b", "best", "better")]
    xs = [b["x"] for b in g["bars"]]
    assert xs[0] < xs[1] < xs[2] < xs[3]                       # training order, left to right
    for b in g["bars"]:                                        # a better bar is wholly above 1/2, worse below
        if b["decision"] == "better":
            assert b["bottom"] <= g["half"] + 1.5, b
        else:
            assert b["top"] >= g["half"] - 1.5, b
    assert abs(g["best"] - (xs[2] + xs[3]) / 2) < 30           # "★ best" over guanaco-65b
    png = browser.get_screenshot_as_png()
    shot = tmp_path / "ladder.png"
    shot.write_bytes(png)
    if os.environ.get("TIEBREAK_SCREENSHOT_DIR"):              # to look at it: make the folder and set this
        (Path(os.environ["TIEBREAK_SCREENSHOT_DIR"]) / "experiment-report-ladder.png").write_bytes(png)
    img = Image.open(io.BytesIO(png)).convert("RGB")
    left, top, right, bottom = (int(v * g["dpr"]) for v in g["chart"])
    chart = img.crop((left, top, right, bottom))
    colours = {c: n for n, c in chart.getcolors(maxcolors=1 << 20)}
    assert colours.get(GREEN, 0) >= 30 and colours.get(RED, 0) >= 30, "estimate markers not drawn in colour"
    assert len(colours) > 50                                   # text, lines, bands: not a blank image
