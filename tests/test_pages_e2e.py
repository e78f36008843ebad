"""The keyboard page and the dashboard in a real headless browser against a real server.

Debian's chromium, driven by Playwright's Python package (Playwright's own browser
download is not used). The tests skip only when no chromium executable is found;
``.ci/run`` installs it (``apt-get install -y chromium``). The server is a real
``fedkb server`` process serving the tiny exported model; rounds are driven over HTTP by
fake phones (small constant deltas, made-up evaluation metrics).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
from server_support import ELIGIBLE, kill, start_server

from fedkb.codec import decode_arrays
from fedkb.wire import UPLOAD_CONTENT_TYPE, UploadMetadata, encode_upload

pytestmark = pytest.mark.e2e

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
WAIT_MS = 20_000


def find_chromium() -> str | None:
    """$FEDKB_CHROMIUM, else Debian's chromium on the PATH."""
    for candidate in (os.environ.get("FEDKB_CHROMIUM"), "/usr/bin/chromium",
                      shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


@pytest.fixture(scope="module")
def browser(tmp_path_factory) -> Iterator[object]:
    """A Playwright browser context on Debian's chromium, closed even if a test fails."""
    path = find_chromium()
    if path is None:
        pytest.skip("chromium not found: install Debian's chromium (apt-get install -y "
                    "chromium; .ci/run does) or set FEDKB_CHROMIUM")
    from playwright.sync_api import sync_playwright

    pw = sync_playwright().start()
    context = None
    try:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=path,
            headless=True, args=CHROMIUM_ARGS)
        context.set_default_timeout(WAIT_MS)
        yield context
    finally:
        if context is not None:
            context.close()
        pw.stop()


class Phone:
    """A fake device over HTTP: constant deltas for training, given metrics for evaluation."""

    def __init__(self, url: str, population: str) -> None:
        self.url, self.s = url, requests.Session()
        r = self.s.post(f"{url}/v1/devices", json={"population": population}, timeout=10)
        r.raise_for_status()
        self.s.headers["Authorization"] = f"Bearer {r.json()['token']}"

    def task(self) -> dict:
        r = self.s.post(f"{self.url}/v1/checkin", json={"conditions": ELIGIBLE}, timeout=10)
        r.raise_for_status()
        body = r.json()
        assert "task" in body, body
        return body["task"]

    def train(self, task: dict, value: float) -> None:
        w = decode_arrays(self.s.get(self.url + task["weights_url"], timeout=10).content)
        meta = UploadMetadata(task["task_id"], task["round_id"], 4, 3.0 - value)
        self._upload(task, encode_upload(meta, [np.full_like(a, value) for a in w]))

    def evaluate(self, task: dict, top1: float) -> None:
        meta = UploadMetadata(task["task_id"], task["round_id"], 10, 3.0,
                              {"top1_recall": top1, "top3_recall": top1 + 0.1})
        self._upload(task, encode_upload(meta, None))

    def _upload(self, task: dict, body: bytes) -> None:
        r = self.s.post(f"{self.url}/v1/tasks/{task['task_id']}/result", data=body,
                        headers={"Content-Type": UPLOAD_CONTENT_TYPE}, timeout=10)
        assert r.status_code == 200, r.text


class Fleet:
    """Two training phones and one held-out phone; one call = evaluate + train one round."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.train = [Phone(url, "train") for _ in range(2)]
        self.held = Phone(url, "heldout")
        self.rounds = 0

    def round(self) -> None:
        self.held.evaluate(self.held.task(), 0.05 * (self.rounds + 1))
        tasks = [p.task() for p in self.train]
        for p, t in zip(self.train, tasks, strict=True):
            p.train(t, 0.01 * (self.rounds + 1))
        self.rounds += 1


@pytest.fixture(scope="module")
def live(tiny_artifact, tmp_path_factory) -> Iterator[tuple[str, Fleet]]:
    """A real server (tiny model) with two committed training rounds and evaluations."""
    tmp = tmp_path_factory.mktemp("pages")
    config = tmp / "server.json"
    config.write_text(json.dumps({"tick_s": 0.1, "round": {
        "report_goal": 2, "overselect": 1.0, "min_fraction": 1.0, "selection_window_s": 600,
        "reporting_deadline_s": 600, "eval_every": 1, "eval_goal": 1, "pipeline": False}}))
    proc, url = start_server(tmp / "state", tiny_artifact, config, tmp / "server.log")
    try:
        fleet = Fleet(url)
        fleet.round()
        fleet.round()
        yield url, fleet
    finally:
        kill(proc)


def _api_words(url: str, text: str) -> list[str]:
    r = requests.post(f"{url}/v1/predict", json={"text": text, "k": 3}, timeout=10)
    r.raise_for_status()
    return [s["word"] for s in r.json()["suggestions"]]


def _strip_is(page, words: list[str]) -> None:
    page.wait_for_function(
        "w => JSON.stringify(Array.from(document.querySelectorAll('#strip .suggestion'))"
        ".map(b => b.dataset.word).filter(Boolean)) === JSON.stringify(w)", arg=words)


def test_typing_shows_suggestions_and_tapping_inserts_one(browser, live):
    url, _ = live
    version = requests.get(f"{url}/v1/status", timeout=10).json()["model_version"]
    page = browser.new_page()
    try:
        page.goto(url + "/")
        page.wait_for_function("v => document.getElementById('model-version').textContent "
                               "=== String(v)", arg=version)
        page.click("#text")
        page.keyboard.type("The cat s")
        expected = _api_words(url, "The cat s")
        assert expected and all(w.startswith("s") for w in expected)
        _strip_is(page, expected)  # completions of "s"
        page.click("#strip .suggestion >> nth=0")
        assert page.input_value("#text") == f"The cat {expected[0].capitalize()} " \
            or page.input_value("#text") == f"The cat {expected[0]} "
        typed = page.input_value("#text")
        nxt = _api_words(url, typed)
        assert nxt
        _strip_is(page, nxt)  # next-word suggestions after the inserted word
        page.click("#strip .suggestion >> nth=1")
        assert page.input_value("#text") == f"{typed}{nxt[1]} "
        assert page.is_hidden("#error")
    finally:
        page.close()


def test_dashboard_draws_charts_and_refreshes_live(browser, live):
    url, fleet = live
    page = browser.new_page()

    def points(chart: str) -> int:
        return int(page.get_attribute(f"[data-chart={chart}] svg", "data-points") or 0)

    def train_rounds() -> int:
        rounds = requests.get(f"{url}/v1/rounds", timeout=10).json()["rounds"]
        return sum(r["kind"] == "train" and r["closed_at"] is not None for r in rounds)

    try:
        page.goto(url + "/dashboard")
        n = train_rounds()  # closed ones (the open one is only in the table)
        page.wait_for_function("n => document.querySelector('[data-chart=participants] svg')"
                               ".dataset.points === String(n)", arg=3 * n)
        assert page.locator("[data-chart=participants] circle.point").count() == 3 * n
        assert points("failures") == 3 * n
        assert points("recall") == 2 * fleet.rounds  # top-1 and top-3 per evaluated version
        assert points("loss") == fleet.rounds  # committed rounds carry the mean loss
        assert points("bytes") == 2 * n  # bytes up and down per closed training round
        assert page.text_content("#s-encoding") == "uplink float32, downlink float32"
        assert page.locator("[data-chart=recall] polyline").count() == 2
        assert page.text_content("#s-version") == str(fleet.rounds)
        assert page.locator("#rounds tbody tr").count() >= n
        fleet.round()  # the page redraws by itself: no reload
        page.wait_for_function("n => document.querySelector('[data-chart=participants] svg')"
                               ".dataset.points === String(n)", arg=3 * (n + 1))
        page.wait_for_function("() => document.getElementById('s-version').textContent "
                               f"=== '{fleet.rounds}'")
        assert points("recall") == 2 * fleet.rounds
        assert page.is_hidden("#error")
    finally:
        page.close()


def _served_version(url: str) -> int:
    """The version /v1/predict serves once it caught up with the latest commit."""
    latest = requests.get(f"{url}/v1/status", timeout=10).json()["model_version"]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the first request after a commit starts the switch
        body = requests.post(f"{url}/v1/predict", json={"text": ""}, timeout=10).json()
        if body["model_version"] == latest:
            return latest
        time.sleep(0.05)
    raise AssertionError(f"/v1/predict did not switch to version {latest}")


def test_cli_predict_against_the_server(live):
    url, _ = live
    version = _served_version(url)
    out = subprocess.run([sys.executable, "-m", "fedkb", "predict", "the cat s", "--server",
                          url, "--json"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    body = json.loads(out.stdout)
    assert [s["word"] for s in body["suggestions"]] == _api_words(url, "the cat s")
    assert body["model_version"] == version


def test_pages_need_nothing_from_outside(live):
    url, _ = live
    external = re.compile(r"https?://(?!www\.w3\.org/2000/svg)")  # the SVG namespace is a name
    for path in ("/", "/dashboard"):
        assert not external.search(requests.get(url + path, timeout=10).text), path
    for f in (Path(__file__).parents[1] / "server" / "static").iterdir():
        assert not external.search(f.read_text(encoding="utf-8")), f
