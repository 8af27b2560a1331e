"""End to end on the real default model (`python launch.py`, gradio_client): a preset saved and chosen in
Chat, with an instruct template, changes what is sent — the generation record holds the preset's values, and
"what was sent" is the ChatML prompt the model read, its tokens the record's prompt tokens."""

from __future__ import annotations

from pathlib import Path

import pytest
from gradio_client import Client

from storage import Store
from storage import repository as repo
from storage.models import LOCAL_OWNER
from webui.settings import DEFAULT_MODEL
from webui.tabs.sampler import NAMES

pytestmark = pytest.mark.e2e


def test_a_preset_and_a_template_chosen_in_chat_are_what_is_sent(running_app, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    data = tmp_path / "data"
    client = Client(running_app(data).url, verbose=False)
    *values, _ = client.predict("Deterministic", api_name="/chat_choose_preset")
    values[NAMES.index("top_k")] = 7
    values[NAMES.index("max_new_tokens")] = 24
    _, status = client.predict(*values, "Short", api_name="/chat_save_preset")
    assert "Short" in status
    *chosen, _ = client.predict("Short", api_name="/chat_choose_preset")
    assert chosen == values
    client.predict(DEFAULT_MODEL, "", "Name three colours.", *chosen, "Short", "ChatML", api_name="/send")
    chatbot, *_ = client.predict(DEFAULT_MODEL, "", *chosen, "Short", "ChatML", api_name="/reply")
    assert chatbot[-1]["role"] == "assistant"
    info, sent = client.predict(api_name="/chat_sent_prompt")
    assert sent == "<|im_start|>user\nName three colours.<|im_end|>\n<|im_start|>assistant\n"  # not SmolLM's own
    store = Store(f"sqlite:///{data / 'studio.db'}", data)
    try:
        with store.begin() as s:
            record = repo.generations_of(s, LOCAL_OWNER)[0]
            assert record.params["preset"] == "Short" and record.params["temperature"] == 0.0
            assert record.params["top_k"] == 7 and record.params["max_new_tokens"] == 24
            assert record.completion_tokens <= 24 and f"{record.prompt_tokens:,} tokens" in info
    finally:
        store.close()
