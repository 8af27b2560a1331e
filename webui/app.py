"""build_app(ctx) -> gr.Blocks: the workspaces as tabs. The only layer that knows Gradio."""

from __future__ import annotations

from typing import Any

import gradio as gr

from .services.context import AppContext
from .tabs import FAST, characters, chat, evaluate, gallery, image, models, prompts, story, train, verify

TITLE = "AIGC Studio"
CSS = """
/* A refused action is shown as a toast; don't also cover the conversation with an error badge. */
[data-testid="status-tracker"]:has(.error) { display: none !important; }
#chat-alternatives { text-align: left; margin: auto 0 auto 6px; }
/* the chatbot's own 🗑 only blanks the view (saved chats stay): "+ New chat" and "Delete…" say what they do */
#chat-conversation button[aria-label="Clear"], #chat-conversation button[title="Clear"] { display: none !important; }
/* no 👍/👎 on a reply that is still being written (Gradio disables its Retry icon meanwhile) */
#chat-conversation .message-buttons:has(button[aria-label="Retry"][disabled])
  :is(button[aria-label="Like"], button[aria-label="Dislike"]) { display: none !important; }
#chat-model-state p { font-size: 0.85em; color: var(--body-text-color-subdued); margin: 2px 0 0 4px; }
#chat-notice p { color: var(--body-text-color-subdued); font-size: 0.9em; }
#story-alternatives { text-align: left; margin: auto 0 auto 6px; }
#story-notice p { text-align: center; margin: auto 0; }
#story-notice p { font-size: 0.95em; }
.story-doc { white-space: pre-wrap; font-family: Georgia, "Times New Roman", serif; font-size: 1.05em; line-height: 1.6;
  min-height: 320px; max-height: 560px; overflow-y: auto; padding: 14px 18px; border: 1px solid var(--border-color-primary);
  border-radius: var(--radius-lg); background: var(--background-fill-primary); }
.story-empty { color: var(--body-text-color-subdued); font-family: inherit; }
.story-user { color: var(--body-text-color); }
.story-model { color: var(--color-accent); border-radius: 3px; }
.story-model-a { background: color-mix(in srgb, var(--color-accent) 7%, transparent); }
.story-model-b { background: color-mix(in srgb, var(--color-accent) 16%, transparent); }
.story-doc [data-n]::before { content: attr(data-n); font-size: 0.6em; vertical-align: super; margin-right: 2px;
  color: var(--body-text-color-subdued); font-family: var(--font); }
.story-legend { font-size: 0.85em; color: var(--body-text-color-subdued); margin: 0 0 4px 4px; }
.story-legend span { padding: 0 3px; }
.story-loading { margin-top: 10px; font-family: var(--font); font-size: 0.9em; color: var(--body-text-color-subdued); }
/* thumbnails flow into as many columns as fit (Gradio's fixed 6 x 100 px clipped at 800 px) */
#gallery-grid .grid-container, #image-gallery .grid-container {
  grid-template-columns: repeat(auto-fill, minmax(84px, 1fr)) !important; }
#image-notice p, #gallery-summary p, #gallery-notice p { color: var(--body-text-color-subdued); font-size: 0.9em; }
#image-grid img, #image-strip img, #image-gif img, #image-reconstruction img, #gallery-preview img,
#image-gallery img, #gallery-grid img { image-rendering: pixelated; }
#gallery-preview img, #image-pnginfo-result img { height: 200px !important; width: auto !important; }
#image-strip img, #image-reconstruction img {
  height: 110px !important; width: auto !important; max-width: 100%; object-fit: contain; }
.characters-hint p { font-size: 0.8em; color: var(--body-text-color-subdued); margin: 0 4px; }
#chat-character-picker { margin-top: 6px; }
#chat-with-character p { margin: 0 0 -4px 4px; }
.story-status { color: var(--body-text-color-subdued); font-style: italic; font-size: 0.85em; margin-left: 4px; }
"""


# Runs once when the page loads.
JS = """() => {
  // World info: one click on a cell starts editing it (Gradio's table otherwise waits for a double-click).
  document.addEventListener("click", (event) => {
    const cell = event.target.closest ? event.target.closest("#story-world-info td") : null;
    if (!cell || cell.querySelector("textarea, input")) return;
    event.target.dispatchEvent(new MouseEvent("dblclick", { bubbles: true }));
  });
}"""

# Gradio's login page says something only for a 400 ("Incorrect Credentials"): a login refused while the
# address or account must wait (429 from the request guard) would leave the page silent. This script (the
# request guard adds it to the page) shows the server's own message ("… wait N s before trying again") above the Login button.
LOGIN_SCRIPT = """<script>
(() => {
  const fetchOriginal = window.fetch.bind(window);
  const show = (text) => {
    let box = document.getElementById("login-refused");
    if (!text) { if (box) box.remove(); return; }
    const button = [...document.querySelectorAll("button")].find((b) => b.textContent.trim() === "Login");
    if (!box) {
      box = document.createElement("p");
      box.id = "login-refused";
      box.setAttribute("role", "alert");
      box.style.cssText = "color: var(--error-text-color, #b91c1c); margin: 0.5em 0; font-weight: 600;";
      if (button && button.parentElement) button.parentElement.insertBefore(box, button);
      else document.body.prepend(box);
    }
    box.textContent = text;
  };
  window.fetch = async (input, init) => {
    const response = await fetchOriginal(input, init);
    let path = "";
    try { path = new URL(typeof input === "string" ? input : input.url, location.href).pathname; } catch (e) {}
    if (/\\/login\\/?$/.test(path) && (init || {}).method === "POST") {
      let text = "";
      if (response.status === 429) {
        text = "Too many failed logins; wait a little before trying again.";
        try { text = (await response.clone().json()).error.message || text; } catch (e) {}
      }
      show(text);
    }
    return response;
  };
})();
</script>"""


def build_app(ctx: AppContext) -> gr.Blocks:
    with gr.Blocks(title=TITLE) as demo:
        gr.Markdown(f"## {TITLE}", elem_id="studio-title")
        chat_parts: dict[str, gr.components.Component] = {}
        with gr.Tabs(overflow_behavior="wrap") as tabs:  # every workspace in view on a narrow window, none behind a "…" menu
            with gr.Tab("Chat", id="chat") as chat_tab:
                chat_on_load = chat.build(ctx, chat_parts)
            with gr.Tab("Characters", id="characters") as characters_tab:
                show_characters = characters.build(ctx, chat_parts.get("open_chat"), tabs)
            with gr.Tab("Story", id="story") as story_tab:
                story_on_load = story.build(ctx)
            with gr.Tab("Image", id="image") as image_tab:
                image.build(ctx)
            with gr.Tab("Gallery", id="gallery") as gallery_tab:
                show_gallery, gallery_inputs, gallery_outputs = gallery.build(ctx)
            with gr.Tab("Evaluate", id="evaluate") as evaluate_tab:
                refresh_evaluate, evaluate_outputs = evaluate.build(ctx)
            with gr.Tab("Prompts", id="prompts") as prompts_tab:
                show_prompts = prompts.build(ctx)
            with gr.Tab("Verify", id="verify") as verify_tab:
                load_label, label_box = verify.build(ctx)
            with gr.Tab("Train", id="train") as train_tab:
                train_on_load = train.build(ctx)
            with gr.Tab("Models", id="models") as models_tab:
                refresh_models, models_table = models.build(ctx)
        chat_on_load(demo, chat_tab.select)
        train_on_load(demo, train_tab.select)
        own_models(ctx, demo, [chat_tab, story_tab, image_tab, evaluate_tab])
        story_on_load(demo)
        gallery_tab.select(show_gallery, gallery_inputs, gallery_outputs, **FAST, api_visibility="private")
        evaluate_tab.select(refresh_evaluate, None, evaluate_outputs, **FAST, api_visibility="private")
        verify_tab.select(load_label, None, label_box, **FAST, api_visibility="private")
        models_tab.select(refresh_models, None, models_table, **FAST, api_visibility="private")
        for tab, (show, inputs, output) in ((characters_tab, show_characters), (prompts_tab, show_prompts)):
            tab.select(show, inputs, output, **FAST, api_visibility="private")
        demo.unload(forget_session(ctx))
    return demo


def forget_session(ctx: AppContext) -> Any:
    """What runs when a browser tab closes (Gradio's unload, once its heartbeat stops): the session's cancel
    events go, so they do not pile up for the life of the server."""

    def forget(request: gr.Request) -> None:
        ctx.cancels.discard_session(getattr(request, "session_hash", None) or "")

    return forget


# elem_id -> (modality or None for every model, the choices listed before the models)
OWN_MODEL_PICKERS: dict[str, tuple[str | None, list[str]]] = {
    "chat-model": ("text", []), "story-model": ("text", []), "image-model": ("image", []),
    "arena-model-a": ("text", ["random"]), "arena-model-b": ("text", ["random"]), "metrics-models": (None, []),
}


def own_models(ctx: AppContext, demo: gr.Blocks, tabs: list[gr.Tab]) -> None:
    """The model pickers of Chat, Story, Image and Evaluate (arena, metrics) list the shared models plus the
    person's own (trained in the Train tab), refreshed when the page loads and when one of those tabs is shown."""
    pickers = [b for b in demo.blocks.values()
               if isinstance(b, gr.Dropdown | gr.CheckboxGroup) and b.elem_id in OWN_MODEL_PICKERS]
    if not pickers:
        return

    def choices(request: gr.Request) -> dict[Any, Any]:
        owner = ctx.owner_for(getattr(request, "username", None))
        out = {}
        for p in pickers:
            modality, first = OWN_MODEL_PICKERS[p.elem_id]
            out[p] = gr.update(choices=first + ctx.registry.names(modality, owner=owner))
        return out

    demo.load(choices, None, pickers, **FAST, api_name="my_models")  # scripts call it to see their own models
    for tab in tabs:
        tab.select(choices, None, pickers, **FAST, api_visibility="private")
