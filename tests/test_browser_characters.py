"""Characters in a real headless Chromium: import a card PNG, start a chat with it, see its greeting;
a hostile card is refused on the page; a saved prompt is inserted into the chat box with its variables."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import ARTIFACTS
from tests.test_browser import bot_texts, page, wait_for  # noqa: F401  (page is a fixture)
from tests.test_characters import avatar_png, card_json, png_with

pytestmark = [pytest.mark.e2e, pytest.mark.browser]


def test_import_a_card_and_chat_with_it(running_app, page, tmp_path: Path) -> None:  # noqa: F811
    card = tmp_path / "seraphina.png"
    card.write_bytes(png_with({"ccv3": card_json("chara_card_v3")}, avatar_png((200, 300), (60, 120, 90))))
    bad = tmp_path / "broken.json"
    bad.write_text('{"spec": "chara_card_v2", "data": {"name": ""}}')
    app = running_app(tmp_path / "data")
    page.goto(app.url)
    page.get_by_role("tab", name="Characters").click()

    # a hostile card: refused with the reason, nothing listed
    with page.expect_file_chooser() as chooser:
        page.click("#characters-import")
    chooser.value.set_files(str(bad))
    page.get_by_text("has no name").first.wait_for()
    assert page.locator("#characters-list label").count() == 0

    with page.expect_file_chooser() as chooser:
        page.click("#characters-import")
    chooser.value.set_files(str(card))
    page.get_by_text("Imported").first.wait_for()
    page.locator("#characters-list label", has_text="Seraphina").wait_for()
    assert page.locator("#character-name textarea, #character-name input").first.input_value() == "Seraphina"
    page.screenshot(path=str(ARTIFACTS / "characters-imported.png"), full_page=True)

    page.click("#character-chat")
    # the Chat tab opens on the new chat; the greeting is its first reply, {{char}}/{{user}} filled in
    wait_for(lambda: any("Welcome, User." in t for t in bot_texts(page)))
    assert bot_texts(page)[0].strip() == "Seraphina smiles at User. Welcome, User."
    page.locator("#chat-with-character", has_text="Chat with Seraphina").wait_for()
    page.locator("#chat-list label", has_text="Chat with Seraphina").wait_for()
    page.get_by_text("version 1 of 2").wait_for()  # the alternative greeting is the other version
    page.screenshot(path=str(ARTIFACTS / "characters-chat.png"), full_page=True)

    # a saved prompt with variables, inserted into the chat box
    page.get_by_role("tab", name="Prompts").click()
    page.locator("#prompt-name textarea, #prompt-name input").first.fill("Ask")
    page.fill("#prompt-text textarea", "Tell me about {{place}} in {{words}} words.")
    page.click("#prompt-save")
    page.locator("#prompts-list label", has_text="Ask").wait_for()
    page.get_by_role("tab", name="Chat", exact=True).click()
    page.click("#chat-prompt-library")
    page.locator("#chat-prompt-choice input").click()
    page.get_by_role("option", name="Ask").click()
    page.locator("#chat-prompt-var-0 textarea, #chat-prompt-var-0 input").first.fill("the glade")
    page.locator("#chat-prompt-var-1 textarea, #chat-prompt-var-1 input").first.fill("20")
    page.click("#chat-prompt-insert")
    wait_for(lambda: page.locator("#chat-input textarea").input_value() == "Tell me about the glade in 20 words.")
    page.screenshot(path=str(ARTIFACTS / "characters-prompt-inserted.png"), full_page=True)
