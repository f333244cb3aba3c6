"""/annotate in headless Chromium (Debian chromium + chromium-driver, installed by `make setup`): real clicks and
keyboard shortcuts produce real labels."""

from __future__ import annotations

import os
import shutil
import time

import httpx
import pytest

from support.serve_process import ServeProcess

pytestmark = pytest.mark.integration
ADMIN = "admin-test-token"
H = {"Authorization": f"Bearer {ADMIN}"}

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


@pytest.fixture
def browser():
    if not (os.path.exists(CHROMIUM) and os.path.exists(DRIVER)):
        if shutil.which("apt-get") is None:
            pytest.skip("chromium is missing and apt is unavailable to install it (Debian: make setup-browser)")
        pytest.fail("chromium/chromium-driver missing: run `make setup-browser` (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        opts.add_argument(a)
    drv = webdriver.Chrome(service=Service(DRIVER), options=opts)
    yield drv
    drv.quit()


def _wait(pred, timeout=10.0):
    t0 = time.time()
    while time.time() - t0 < timeout:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError("timed out")


def test_annotate_page_click_and_keys(tmp_path, browser):
    from selenium.webdriver.common.by import By

    pairs = [{"id": f"p{i}", "prompt": f"Question number {i}?", "base": f"BASE reply {i}", "tuned": f"TUNED reply {i}"}
             for i in range(40)]
    with ServeProcess(tmp_path, admin_token=ADMIN) as s:
        rid = httpx.post(f"{s.url}/v1/runs", json={"name": "b", "pairs": pairs, "judges": [], "criteria": ["tone"],
                                                    "budget": 5}, headers=H).json()["run_id"]
        tok = httpx.post(f"{s.url}/v1/annotators", json={"name": "eve", "runs": [rid]}, headers=H).json()["token"]
        browser.get(f"{s.url}/annotate?run={rid}#token={tok}")
        prompt = lambda: browser.find_element(By.ID, "prompt").text  # noqa: E731
        _wait(lambda: prompt().startswith("Question"))
        html = browser.page_source
        assert "TUNED reply" in html and "BASE reply" in html
        assert "base" not in browser.find_element(By.TAG_NAME, "header").text.lower()
        assert "#token" not in browser.current_url            # the token left the address bar
        expected: dict[str, str] = {}

        def tuned_side() -> str:
            return "left" if browser.find_element(By.ID, "left").text.startswith("TUNED") else "right"

        # 1) click a per-criterion button and the button for the tuned side
        first = prompt()
        side = tuned_side()
        browser.find_element(By.ID, "crit-tone-tie").click()
        browser.find_element(By.ID, f"btn-{side}").click()
        expected[first] = "tuned"
        # 2..4) keyboard shortcuts 1 / 2 / 0
        body = browser.find_element(By.TAG_NAME, "body")
        for key in ("1", "2", "0"):
            _wait(lambda prev=first: prompt() != prev and prompt().startswith("Question"))
            first = prompt()
            side = tuned_side()
            body.send_keys(key)
            expected[first] = {"1": "tuned" if side == "left" else "base",
                               "2": "tuned" if side == "right" else "base", "0": "tie"}[key]
        _wait(lambda: "you: 4 labelled" in browser.find_element(By.ID, "progress").text or
              browser.find_element(By.ID, "task").get_attribute("hidden"))
        st = _wait(lambda: (r := httpx.get(f"{s.url}/v1/runs/{rid}", headers=H).json())["annotations"] == 4 and r)
        assert st["labels"] == 4 and st["criteria"]["tone"]["labels"] == 1
        # the stored labels are what was clicked, mapped back through the randomised sides
        from tiebreak.services.store import RedisStore

        store = RedisStore.open(redis_url=None, data_dir=tmp_path)
        labels = {store.get_pair(rid, idx)["prompt"]: rec for idx, ann, rec in store.load_labels(rid)}
        assert {ann for _, ann, _ in store.load_labels(rid)} == {"eve"}
        for q, want in expected.items():
            y = labels[q]["y"]
            assert y == {"tuned": 1.0, "base": 0.0, "tie": 0.5}[want], (q, want, labels[q])
        assert next(iter(labels[list(expected)[0]]["criteria"].values())) == 0.5
