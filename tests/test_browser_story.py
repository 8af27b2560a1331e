"""The Story workspace in a real headless Chromium against `python launch.py` on the default
model: write, Continue (it streams), Stop, Retry, flip versions, Undo, restart, reopen.
Screenshots land in test-artifacts/story-*.png so a person can look at them."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import ARTIFACTS
from tests.test_browser import page, wait_for  # noqa: F401 (the `page` fixture)

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

OPENING = "Elsa opened her bakery at dawn. The first customer was a tall stranger in a grey coat."


def doc(page) -> str:  # noqa: F811
    """The document's text as shown (status notes such as “(stopped)” included)."""
    box = page.locator("#story-doc")
    return box.inner_text() if box.count() else ""


def idle(page) -> bool:  # noqa: F811
    """The model is not writing: no “writing…” note and no progress tracker on the document."""
    trackers = page.locator("#story-document [data-testid='status-tracker']")
    busy = any("hide" not in (c or "") for c in trackers.evaluate_all("els => els.map(e => e.className)"))
    return not busy and "writing…" not in doc(page)


def shot(page, name: str) -> None:  # noqa: F811
    page.screenshot(path=str(ARTIFACTS / f"story-{name}.png"), full_page=True)


def test_story_in_a_real_browser(running_app, page, tmp_path: Path) -> None:  # noqa: F811
    data = tmp_path / "data"
    app = running_app(data)
    page.goto(app.url)
    page.get_by_role("tab", name="Story").click()

    # type the opening and Continue: the opening shows, then the model's text streams in
    page.fill("#story-input textarea", OPENING)
    page.click("#story-continue")
    wait_for(lambda: doc(page).startswith(OPENING))
    lengths = {len(wait_for(lambda: doc(page) if len(doc(page)) > len(OPENING) + 2 else "", timeout=120))}
    wait_for(lambda: idle(page) or (lengths.add(len(doc(page))) and False), timeout=180, every=0.05)
    assert len(lengths) >= 2, "the continuation should arrive in several updates"
    page.locator("#story-list label").first.wait_for()  # the story is listed under its opening words
    first = doc(page)
    assert len(first) > len(OPENING) + 5 and "(stopped)" not in first
    shot(page, "continued")

    # Continue again and Stop half-way: what was written is kept, marked as stopped
    page.click("#story-continue")
    wait_for(lambda: len(doc(page)) > len(first) + 20, timeout=120, every=0.05)
    page.click("#story-stop")
    wait_for(lambda: "(stopped)" in doc(page), timeout=60)
    page.get_by_text("what was written is kept").wait_for()
    stopped = doc(page)
    shot(page, "stopped")

    # Retry: the stopped continuation becomes version 1 of 2
    page.click("#story-retry")
    page.locator("#story-alternatives").get_by_text("2 of 2").wait_for()
    wait_for(lambda: idle(page) and "(stopped)" not in doc(page), timeout=180)
    retried = doc(page)
    assert retried.startswith(first) and retried != stopped
    shot(page, "retried")

    # flip back to the first version, then Undo the flip
    page.click("#story-prev")
    page.locator("#story-alternatives").get_by_text("1 of 2").wait_for()
    wait_for(lambda: doc(page) == stopped)
    shot(page, "alternatives")
    page.click("#story-undo")
    page.get_by_text("Undid the switch to another version").wait_for()
    page.locator("#story-alternatives").get_by_text("2 of 2").wait_for()
    wait_for(lambda: doc(page) == retried)
    shot(page, "undone")

    # restart on the same data folder: the story is listed and opens as it was left
    app.stop()
    app2 = running_app(data)
    page.goto(app2.url)
    page.get_by_role("tab", name="Story").click()
    page.locator("#story-list label").first.wait_for()
    page.locator("#story-list label").first.click()
    wait_for(lambda: doc(page) == retried)
    page.locator("#story-alternatives").get_by_text("2 of 2").wait_for()
    shot(page, "after-restart")
