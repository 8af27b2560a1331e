"""The Chat workspace: a sidebar of chats, the conversation, sampler settings.

Layout first, listeners at the bottom. Every click lands in a service function of
`webui.services.chat` within two hops.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gradio as gr

from ..errors import ui_errors
from ..services import chat as svc
from ..services import ratings, workspace_defaults
from ..services.context import AppContext
from . import FAST, chat_character, chat_sidebar, prompt_picker
from . import instruct as instruct_ui
from . import presets as presets_ui
from .chat_view import alternatives_label, chatbot_messages, default_focus
from .sampler import build_sampler

RATINGS = ("Like", "Dislike")
STATUS_EVERY_S = 2.0


def build(ctx: AppContext, exposed: dict[str, Any] | None = None) -> Callable[[gr.Blocks], None]:
    """Lay out the Chat tab inside the current Blocks and wire its events.

    Returns a function that wires what must run when the page loads; `exposed` receives the components
    other tabs may write to (`open_chat`: a chat id written there opens that chat)."""
    text_models = ctx.registry.names("text")
    chat_id = gr.State(None)
    msg_ids = gr.State([])
    focus_id = gr.State(None)

    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=240):
            side = chat_sidebar.build_layout()
            character_picker = chat_character.build_layout()
        with gr.Column(scale=4):
            with gr.Row():
                with gr.Column(scale=3, min_width=200):
                    model = gr.Dropdown(text_models, value=ctx.default_model, label="Model", elem_id="chat-model")
                    model_state = gr.Markdown(elem_id="chat-model-state")
                    status_timer = gr.Timer(STATUS_EVERY_S)
                system_prompt = gr.Textbox(label="System prompt", placeholder="optional", scale=5, lines=2)
            header = chat_character.build_header()
            chatbot = gr.Chatbot(
                label="Conversation",
                elem_id="chat-conversation",
                height=480,
                editable="user",
                buttons=["copy", "copy_all"],
                feedback_options=RATINGS,
                placeholder="Type a message below and press Enter.",
            )
            notice = gr.Markdown(elem_id="chat-notice")
            with gr.Row():
                message = gr.Textbox(
                    show_label=False,
                    placeholder="Message (Enter to send, Shift+Enter for a new line)",
                    scale=8,
                    lines=1,
                    max_lines=12,
                    elem_id="chat-input",
                )
                send = gr.Button("Send", variant="primary", scale=1, elem_id="chat-send")
                stop = gr.Button("Stop", variant="stop", scale=1, elem_id="chat-stop")
            prompt_picker.build(ctx, message, "chat")
            with gr.Row(elem_id="chat-versions"):
                regenerate = gr.Button("↻ Regenerate", size="sm", scale=0, min_width=140, elem_id="chat-regenerate")
                prev_alt = gr.Button("◀", size="sm", min_width=40, scale=0, elem_id="chat-prev")
                next_alt = gr.Button("▶", size="sm", min_width=40, scale=0, elem_id="chat-next")
                alt_label = gr.Markdown("", elem_id="chat-alternatives")
            sampler = build_sampler(workspace_defaults.CHAT, presets="chat")
            templates = instruct_ui.build_layout("chat")
    picker = sampler.presets
    assert picker is not None

    gen_inputs = {chat_id, model, system_prompt, *sampler.components, picker.preset, templates.template}

    # ------------------------------------------------------------ handlers
    def settings_from(values: dict[Any, Any], request: gr.Request) -> svc.ReplySettings:
        params = sampler.params(values)
        return svc.reply_settings(ctx, values[model], params, values[system_prompt] or "", values[picker.preset],
                                  values[templates.template], owner(request))

    def render(view: svc.ChatView, focus: str | None = None) -> dict[Any, Any]:
        focus = view.focus or focus
        focus = focus if any(m.id == focus for m in view.messages) else default_focus(view)
        return {
            chatbot: chatbot_messages(view),
            msg_ids: [m.id for m in view.messages],
            chat_id: view.id,
            focus_id: focus,
            notice: view.notice,
            alt_label: alternatives_label(view, focus),
        }

    def describe_model(name: str | None, request: gr.Request = None) -> str:
        who = ctx.owner_for(getattr(request, "username", None)) if request is not None else None
        if not name or not ctx.registry.visible(name, who):  # the shared models and the person's own
            return ""
        loading = ctx.loads.progress(name)
        if loading is not None:
            return f"◌ loading — {loading.text}"
        d = ctx.registry.get(name).describe()
        if not d["loaded"]:
            return "○ not loaded — loads on the first message"
        parts = ["● loaded", f"{d['memory_bytes'] / 2**20:.0f} MB", d.get("device") or ""]
        if d.get("context_window"):
            parts.append(f"{d['context_window']:,}-token context")
        return " · ".join(p for p in parts if p)

    def owner(request: gr.Request) -> str:
        return ctx.owner_for(getattr(request, "username", None))

    @ui_errors
    def post_message(values: dict[Any, Any], request: gr.Request) -> dict[Any, Any]:
        view = svc.add_user_message(ctx, owner(request), values[chat_id], values[message], settings_from(values, request))
        ctx.cancels.fresh(request.session_hash or "")
        return {**render(view), message: ""}

    @ui_errors
    def stream(values: dict[Any, Any], request: gr.Request) -> Any:
        if not values[chat_id]:
            return
        cancel = ctx.cancels.current(request.session_hash or "")
        for view in svc.stream_reply(ctx, owner(request), values[chat_id], settings_from(values, request), cancel):
            yield render(view)

    @ui_errors
    def prepare_regenerate(cid: str | None, request: gr.Request) -> dict[Any, Any]:
        if not cid:
            raise gr.Error("Open or start a chat first.")
        ctx.cancels.fresh(request.session_hash or "")
        return render(svc.prepare_regenerate(ctx, owner(request), cid))

    @ui_errors
    def edit(cid: str | None, ids: list[str], data: gr.EditData, request: gr.Request) -> dict[Any, Any]:
        index = data.index if isinstance(data.index, int) else data.index[0]
        if not cid or index >= len(ids):
            raise gr.Error("That message is not part of a saved chat.")
        ctx.cancels.fresh(request.session_hash or "")
        return render(svc.edit_message(ctx, owner(request), cid, ids[index], str(data.value)))

    def stop_generation(request: gr.Request) -> None:
        ctx.cancels.cancel(request.session_hash or "")

    @ui_errors
    def focus_message(cid: str | None, ids: list[str], data: gr.SelectData, request: gr.Request) -> dict[Any, Any]:
        index = data.index if isinstance(data.index, int) else data.index[0]
        if not cid or index >= len(ids):
            return {}
        return render(svc.get_chat(ctx, owner(request), cid), ids[index])

    def flip(step: int) -> Any:
        @ui_errors
        def handler(cid: str | None, focus: str | None, request: gr.Request) -> dict[Any, Any]:
            if not cid or not focus:
                raise gr.Error("Nothing to flip: this chat has no alternative replies yet.")
            return render(svc.switch_branch(ctx, owner(request), cid, focus, step))

        return handler

    # ------------------------------------------------------------ wiring
    view_outputs = [chatbot, msg_ids, chat_id, focus_id, notice, alt_label]
    generate = {"concurrency_id": "generate", "concurrency_limit": ctx.settings.generation_slots()}
    refresh_list = chat_sidebar.wire(ctx, side, chat_id, render, view_outputs)
    chat_character.wire(ctx, character_picker, render, view_outputs, side.chats, refresh_list, side.search, chat_id, header)
    if exposed is not None:
        exposed["open_chat"] = character_picker.opened

    def after_reply(query: str, cid: str | None, name: str | None, request: gr.Request) -> dict[Any, Any]:
        return {side.chats: refresh_list(query, cid, request), model_state: describe_model(name, request)}

    private = {"api_visibility": "private"}
    for i, trigger in enumerate((send.click, message.submit)):
        names = {"api_name": "send"} if i == 0 else private
        trigger(post_message, gen_inputs | {message}, view_outputs + [message], **FAST, **names).success(
            stream, gen_inputs, view_outputs, **generate, **({"api_name": "reply"} if i == 0 else private)
        ).then(after_reply, [side.search, chat_id, model], [side.chats, model_state], **private)
    for i, trigger in enumerate((regenerate.click, chatbot.retry)):
        names = {"api_name": "regenerate"} if i == 0 else private
        trigger(prepare_regenerate, chat_id, view_outputs, **FAST, **names).success(
            stream, gen_inputs, view_outputs, **generate, **private
        ).then(after_reply, [side.search, chat_id, model], [side.chats, model_state], **private)
    chatbot.edit(edit, [chat_id, msg_ids], view_outputs, **FAST, **private).success(
        stream, gen_inputs, view_outputs, **generate, **private
    ).then(after_reply, [side.search, chat_id, model], [side.chats, model_state], **private)
    chatbot.select(focus_message, [chat_id, msg_ids], view_outputs, **FAST, **private)
    stop.click(stop_generation, None, None, **FAST, api_name="stop")
    prev_alt.click(flip(-1), [chat_id, focus_id], view_outputs, **FAST, api_name="previous_version")
    next_alt.click(flip(+1), [chat_id, focus_id], view_outputs, **FAST, api_name="next_version")

    model.change(describe_model, model, model_state, **FAST, **private)
    # The status line is read afresh every few seconds: a load in progress (its stage and time), and a
    # model unloaded or reloaded from the Models view or by another user, never shown stale.
    status_timer.tick(describe_model, model, model_state, **FAST, **private)
    # A new chat is listed as soon as its first message is saved, not when the reply is done.
    chat_id.change(refresh_list, [side.search, chat_id], side.chats, **FAST, **private)

    @ui_errors
    def like(ids: list[str], evt: gr.LikeData, request: gr.Request) -> str:
        index = evt.index if isinstance(evt.index, int) else evt.index[0]
        if not isinstance(index, int) or not 0 <= index < len(ids):
            raise gr.Error("That message is no longer shown; open the chat again.")
        value = 1 if evt.liked is True else -1 if evt.liked is False else None
        stored = ratings.rate(ctx, owner(request), "message", ids[index], value)
        return {1: "Rated 👍 — thanks.", -1: "Rated 👎 — thanks.", 0: "Rating removed."}[stored]

    chatbot.like(like, msg_ids, notice, **FAST, **private)
    load_presets = presets_ui.wire(ctx, picker, sampler.components, sampler.values_of, sampler.params, model, "chat")
    instruct_ui.wire(ctx, templates, chat_id, "chat")

    def on_page_load(demo: gr.Blocks, shown: Any = None) -> None:
        """Wire the page load, and `shown` (the tab's select event): the status line is read afresh
        each time, so a model unloaded or reloaded in the Models view is never shown stale here."""
        demo.load(after_reply, [side.search, chat_id, model], [side.chats, model_state], **FAST, **private)
        load_presets(demo)
        if shown is not None:
            shown(describe_model, model, model_state, **FAST, **private)

    return on_page_load
