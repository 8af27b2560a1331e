"""A real headless Chromium (Debian's) driven by Playwright against `python launch.py` on the
default model. Screenshots land in test-artifacts/ so a person can look at them."""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import pytest

from tests.conftest import ARTIFACTS
from webui.tabs.chat_view import WAITING

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-quic"]


@pytest.fixture
def page():
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is missing: run ./setup.sh (it installs chromium and chromium-driver)")
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        pg = browser.new_page(viewport={"width": 1400, "height": 1000})
        pg.set_default_timeout(60_000)
        try:
            yield pg
        finally:
            pg.screenshot(path=str(ARTIFACTS / "last-state.png"), full_page=True)
            browser.close()


def bot_texts(page) -> list[str]:
    return page.locator("[data-testid='bot']").all_inner_texts()


def generating(page) -> bool:
    """True while the page shows a generation in progress."""
    trackers = page.locator("#chat-alternatives [data-testid='status-tracker']")
    return any("hide" not in (c or "") for c in trackers.evaluate_all("els => els.map(e => e.className)"))


def wait_for(predicate, timeout: float = 60.0, every: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError("condition not met in time")


def test_chat_in_a_real_browser(running_app, page, tmp_path: Path) -> None:
    data = tmp_path / "data"
    app = running_app(data)
    page.goto(app.url)
    page.fill("#chat-input textarea", "What is the capital of France?")
    page.click("#chat-send")
    # the user's message shows at once, then the reply streams in
    page.get_by_text("What is the capital of France?").first.wait_for()
    # the first reply includes the one-time GGUF → safetensors conversion of a fresh clone (slow on a busy CPU)
    # (while the model loads, the reply's place shows the load stage: wait for the reply's own text)
    first = wait_for(lambda: [t for t in bot_texts(page) if len(t) > 5 and "Loading" not in t and WAITING not in t],
                     timeout=400)
    wait_for(lambda: not generating(page), timeout=180)
    page.locator("#chat-list label").first.wait_for()  # the reply is done and the chat is listed
    page.screenshot(path=str(ARTIFACTS / "chat-reply.png"), full_page=True)
    assert first

    # a long reply, stopped half-way
    page.fill("#chat-input textarea", "Write a very long story about a dragon and a knight.")
    page.click("#chat-send")
    wait_for(lambda: len(bot_texts(page)) == 2 and len(bot_texts(page)[-1]) > 30)
    page.click("#chat-stop")
    wait_for(lambda: "(stopped)" in bot_texts(page)[-1])
    page.get_by_text("the partial reply is saved").wait_for()
    page.screenshot(path=str(ARTIFACTS / "chat-stopped.png"), full_page=True)

    # regenerate: the stopped reply becomes version 1 of 2
    page.click("#chat-regenerate")
    page.get_by_text("2 of 2").wait_for()
    wait_for(lambda: "(stopped)" not in bot_texts(page)[-1] and len(bot_texts(page)[-1]) > 5)
    wait_for(lambda: not generating(page), timeout=180)
    page.click("#chat-prev")
    page.get_by_text("1 of 2").wait_for()
    wait_for(lambda: "(stopped)" in bot_texts(page)[-1])
    page.screenshot(path=str(ARTIFACTS / "chat-alternatives.png"), full_page=True)

    # restart the app on the same data folder: the chat is listed and opens as it was
    app.stop()
    app2 = running_app(data)
    page.goto(app2.url)
    page.locator("#chat-list label").first.wait_for()
    page.locator("#chat-list label").first.click()
    page.get_by_text("Write a very long story about a dragon and a knight.").wait_for()
    wait_for(lambda: len(bot_texts(page)) == 2)
    page.screenshot(path=str(ARTIFACTS / "chat-after-restart.png"), full_page=True)

    # bad input gets a message, not a crash
    page.click("#chat-send")
    page.get_by_text("Type a message first.").first.wait_for()

    # the Models view loads a model on request and shows its state and memory
    page.get_by_role("tab", name="Models").click()
    page.get_by_role("button", name="Load", exact=True).click()
    page.get_by_text(re.compile(r"loaded \(\d+ MB\)")).wait_for()
    def default_model_state() -> str:  # the other configured models (LSTM, GAN, VAE) stay "not loaded"
        cells = [c.strip() for c in page.locator("#models-table").inner_text().splitlines()]
        i = cells.index("smollm2-135m-instruct") if "smollm2-135m-instruct" in cells else -1
        return cells[i + 3] if i >= 0 and i + 3 < len(cells) else ""  # name, plugin, modality, state

    wait_for(lambda: default_model_state() == "loaded")
    page.screenshot(path=str(ARTIFACTS / "models.png"), full_page=True)
