"""Two users in a real headless Chromium against `python launch.py --auth …` on the default models:
log in, chat with streaming and Stop, continue a story, generate images, open the gallery — then the
second user sees none of it. Screenshots land in test-artifacts/."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import ARTIFACTS
from tests.test_browser import ARGS, CHROMIUM, bot_texts, wait_for
from webui.tabs.chat_view import WAITING

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
        # the reply's own text, not the load stage shown in its place first (the first load converts the GGUF)
        wait_for(lambda: bot_texts(ann) and len(bot_texts(ann)[-1]) > 30 and "Loading" not in bot_texts(ann)[-1]
                 and WAITING not in bot_texts(ann)[-1] and "Converting" not in bot_texts(ann)[-1], timeout=400)
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


def test_the_login_page_says_when_logins_must_wait(running_app, tmp_path: Path) -> None:
    """Past a few wrong passwords the guard answers 429 before checking anything; Gradio's own login page
    shows nothing for that status, so the studio's page script shows the server's message."""
    from playwright.sync_api import sync_playwright

    app = running_app(tmp_path / "data", ["--auth", "ann:ann-password"])
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page()
            page.set_default_timeout(60_000)
            page.goto(app.url)
            refused = page.locator("#login-refused")
            for attempt in range(12):  # 3 free failures, then waits of 1, 2, 4 … s: a quick try is refused
                page.get_by_label("username").fill("ann")
                page.get_by_label("password").fill(f"wrong-{attempt}")
                with page.expect_response(lambda r: r.url.endswith("/login")) as answer:
                    page.get_by_role("button", name="Login").click()
                if answer.value.status == 429:
                    break
            assert answer.value.status == 429
            refused.wait_for()
            assert "Too many failed logins" in refused.inner_text() and "wait" in refused.inner_text()
            page.screenshot(path=str(ARTIFACTS / "accounts-login-refused.png"))
        finally:
            browser.close()
