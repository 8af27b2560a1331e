"""A newcomer's first ten minutes in a real headless Chromium against `python launch.py` on a fresh
data folder: the first chat message (the reply area says what it waits for, the chat is listed), a
one-step export, a story continuation, an image batch, a gallery re-run, a metric; then every
workspace again at 800 px. Screenshots land in test-artifacts/newcomer-*-{1400,800}.png."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from tests.conftest import ARTIFACTS
from tests.test_browser import bot_texts, page, wait_for  # noqa: F401 (the `page` fixture)

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

WIDTHS = (1400, 800)


def shot(page, name: str, width: int = 1400) -> None:  # noqa: F811
    page.screenshot(path=str(ARTIFACTS / f"newcomer-{name}-{width}.png"), full_page=True)


def tab(page, name: str) -> None:  # noqa: F811
    page.get_by_role("tab", name=name, exact=True).click()


def test_the_first_ten_minutes(running_app, page, tmp_path: Path) -> None:  # noqa: F811
    app = running_app(tmp_path / "fresh-data")
    page.goto(app.url)

    # ---- Chat: the first message. The reply area says what it waits for; no 👍/👎 on it meanwhile.
    page.fill("#chat-input textarea", "Tell me about cats.")
    page.click("#chat-send")
    page.locator("#chat-list label", has_text="Tell me about cats.").wait_for(timeout=20_000)  # listed at once
    first = page.locator("[data-testid='bot']").first
    first.wait_for()
    if page.locator("#chat-conversation [aria-busy='true']").count():  # still loading or reading the prompt
        assert not page.locator("#chat-conversation button[aria-label='Like']").is_visible()
        shot(page, "chat-waiting")
    assert not page.locator("#chat-conversation button[aria-label='Clear']").is_visible()
    wait_for(lambda: [t for t in bot_texts(page) if len(t) > 20] and "being written" not in
             page.locator("#chat-alternatives").inner_text(), timeout=400)  # fmt: skip
    page.locator("#chat-conversation button[aria-label='Like']").first.wait_for()  # now there is a reply to rate
    assert "● loaded" in page.locator("#chat-model-state").inner_text()
    assert "Reply 1 · the only version" in page.locator("#chat-alternatives").inner_text()
    shot(page, "chat")

    # one-step export: the button downloads the file
    page.get_by_text("This chat", exact=True).click()
    with page.expect_download() as download:
        page.click("#chat-export-md")
    saved = download.value.path()
    assert saved is not None and "Tell me about cats." in Path(saved).read_text(encoding="utf-8")

    # a search with no results says so
    page.fill("#chat-search input, #chat-search textarea", "zebra crossings")
    page.get_by_text("none match “zebra crossings”").wait_for()
    page.fill("#chat-search input, #chat-search textarea", "")

    # ---- Story: a continuation, told apart from the writer's text.
    tab(page, "Story")
    page.fill("#story-input textarea", "The lighthouse keeper had not seen a ship in eleven days.")
    page.click("#story-continue")
    page.locator("#story-doc .story-model").first.wait_for(timeout=300_000)
    wait_for(lambda: not page.locator("#story-doc .story-status").count(), timeout=300_000)  # "(writing…)" gone
    assert page.locator("#story-doc .story-user").count() == 1
    shot(page, "story")

    # ---- Image: a batch.
    tab(page, "Image")
    page.click("#image-generate-button")
    page.locator("#image-notice").get_by_text(re.compile(r"\d+ image")).wait_for(timeout=120_000)
    shot(page, "image")

    # ---- Gallery: open the newest image, Re-run it; the message stays and the new copy is highlighted.
    tab(page, "Gallery")
    page.locator("#gallery-grid button").first.wait_for()
    page.locator("#gallery-grid button").nth(1).click()
    page.locator("#gallery-made-by").get_by_text("Made").wait_for()
    old_id = page.locator("#gallery-image-id textarea, #gallery-image-id input").first.input_value()
    page.click("#gallery-rerun")
    notice = page.locator("#gallery-notice")
    notice.get_by_text("the same image as the original").wait_for(timeout=60_000)
    time.sleep(2)  # the re-run selects its new copy; that must not replace the message
    assert "the same image as the original" in notice.inner_text()
    new_id = page.locator("#gallery-image-id textarea, #gallery-image-id input").first.input_value()
    assert new_id and new_id != old_id
    wait_for(lambda: page.locator("#gallery-grid button.selected, #gallery-grid .thumbnail-item.selected").count() == 1)
    shot(page, "gallery")

    # ---- Evaluate: a metric (the GAN's digit accuracy and Fréchet distance only).
    tab(page, "Evaluate")
    page.get_by_role("tab", name="Metrics").click()
    boxes = page.locator("#component-0 label, label").filter(has=page.locator("input[type=checkbox]"))
    for i in range(boxes.count()):
        box = boxes.nth(i)
        if box.is_visible() and box.locator("input").is_checked() and "gan-mnist32" not in box.inner_text():
            box.click()
    page.click("#metrics-run")
    page.locator("#metrics-status").get_by_text("Measured").wait_for(timeout=300_000)
    assert "gan-mnist32" in page.locator("#metrics-latest").inner_text()
    page.get_by_role("tab", name="Arena (blind)").click()
    shot(page, "evaluate")

    tab(page, "Models")
    wait_for(lambda: "smollm2-135m-instruct" in page.locator("#models-table").inner_text())
    shot(page, "models")

    # ---- every workspace again at 800 px: nothing clipped sideways
    page.set_viewport_size({"width": 800, "height": 1000})
    for name in ("Chat", "Story", "Image", "Gallery", "Evaluate", "Verify", "Characters", "Prompts", "Train", "Models"):
        tab(page, name)
        time.sleep(0.5)
        overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
        shot(page, name.lower(), 800)
        assert overflow <= 0, f"the {name} workspace is wider than the 800 px window by {overflow} px"
