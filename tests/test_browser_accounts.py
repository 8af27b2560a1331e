"""Two users in a real headless Chromium against `python launch.py --auth …` on the default models:
log in, chat with streaming and Stop, continue a story, generate images, open the gallery — then the
second user sees none of it. Screenshots land in test-artifacts/."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import ARTIFACTS
from tests.test_browser import ARGS, CHROMIUM, bot_texts, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.browser]


def login(browser, url: str, name: str):  # type: ignore[no-untyped-def]
    page = browser.new_page()  # a Browser gives each page its own context (its own cookies); so does a BrowserContext
    page.set_viewport_size({"width": 1400, "height": 1000})
    page.set_default_timeout(60_000)
    page.goto(url)
    page.get_by_label("username").fill(name)
    page.get_by_label("password").fill(f"{name}-password")
    page.screenshot(path=str(ARTIFACTS / "accounts-login.png"))
    page.get_by_role("button", name="Login").click()
    page.locator("#chat-input textarea").wait_for()
    return page


def test_two_users_in_a_real_browser(running_app, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    app = running_app(tmp_path / "data", ["--auth", "ann:ann-password", "--auth", "bob:bob-password"])
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        # a wrong password is refused
        page = browser.new_page()
        page.goto(app.url)
        page.get_by_label("username").fill("ann")
        page.get_by_label("password").fill("not-her-password")
        page.get_by_role("button", name="Login").click()
        page.get_by_text("Incorrect Credentials").wait_for()
        page.close()

        ann = login(browser, app.url, "ann")
        try:
            check_ann_and_bob(browser, ann, app.url)
        finally:
            ann.screenshot(path=str(ARTIFACTS / "accounts-last-state.png"), full_page=True)
            browser.close()


def check_ann_and_bob(browser, ann, url: str) -> None:  # type: ignore[no-untyped-def]
    if True:
        # chat: a reply streams in; a long one is stopped
        ann.fill("#chat-input textarea", "Write a very long story about a lighthouse keeper.")
        ann.click("#chat-send")
        wait_for(lambda: bot_texts(ann) and len(bot_texts(ann)[-1]) > 30, timeout=400)  # first load converts the GGUF
        ann.click("#chat-stop")
        wait_for(lambda: "(stopped)" in bot_texts(ann)[-1])
        ann.locator("#chat-list label").first.wait_for()
        ann.screenshot(path=str(ARTIFACTS / "accounts-ann-chat.png"), full_page=True)
        # story: write and continue
        ann.get_by_role("tab", name="Story").click()
        ann.fill("#story-input textarea", "The lighthouse keeper found a letter in a bottle.")
        ann.click("#story-continue")
        ann.locator("#story-list label").first.wait_for(timeout=180_000)  # a slow CPU under load
        wait_for(lambda: len(ann.locator("#story-doc").inner_text()) > 80)
        # images: a batch of digits, then the gallery
        ann.get_by_role("tab", name="Image").click()
        ann.locator("#image-seed textarea, #image-seed input").first.fill("7")
        ann.click("#image-generate-button")
        ann.locator("#image-gallery .thumbnail-item, #image-gallery img").first.wait_for()
        ann.get_by_text("seeds 7–16").wait_for()
        ann.screenshot(path=str(ARTIFACTS / "accounts-ann-images.png"), full_page=True)
        ann.get_by_role("tab", name="Gallery").click()
        ann.locator("#gallery-summary").get_by_text("10 image(s) · page 1 of 1").wait_for()
        ann.locator("#gallery-grid .thumbnail-item").first.click()
        wait_for(lambda: len(ann.locator("#gallery-image-id textarea, #gallery-image-id input").first.input_value()) == 32)
        ann.screenshot(path=str(ARTIFACTS / "accounts-ann-gallery.png"), full_page=True)

        # bob, in his own browser context, sees nothing of ann's
        bob_context = browser.new_context()
        bob = login(bob_context, url, "bob")
        assert bob.locator("#chat-list label").count() == 0
        bob.get_by_role("tab", name="Story").click()
        bob.wait_for_timeout(500)
        assert bob.locator("#story-list label").count() == 0
        bob.get_by_role("tab", name="Gallery").click()
        bob.get_by_text("No images yet").wait_for()
        bob.screenshot(path=str(ARTIFACTS / "accounts-bob-gallery.png"), full_page=True)
        content = bob.content()
        assert "lighthouse" not in content.lower()
