"""How a StoryView looks in Gradio components (pure functions, no events)."""

from __future__ import annotations

import html
from typing import Any

from ..services.story import STATUS_NOTE, StoryView

PLACEHOLDER = (
    '<div class="story-doc story-empty">Write the opening of your story below and press <b>Continue</b>; '
    "the model's text streams in here.</div>"
)


LEGEND = (
    '<div class="story-legend"><span class="story-user">your text</span> · '
    '<span class="story-model story-model-a">the model\'s passages</span>, each shaded in turn '
    "(small numbers mark the passages; hover one for who wrote it)</div>"
)


def story_html(view: StoryView) -> str:
    """The story as one document: the writer's text and the model's told apart by colour, the
    model's consecutive passages by alternating shades, each passage numbered (as ◀ ▶ and the
    passage editor name them)."""
    loading = (f'<div class="story-loading" id="story-loading">Waiting for the model — {html.escape(view.loading)}</div>'
               if view.loading else "")
    if not view.passages:
        return PLACEHOLDER.replace("</div>", loading + "</div>", 1) if loading else PLACEHOLDER
    spans, model_count = [], 0
    for i, p in enumerate(view.passages, start=1):
        who = "you" if p.author == "user" else f"model{f' ({p.model})' if p.model else ''}"
        shade = ""
        if p.author == "model":
            model_count += 1
            shade = " story-model-a" if model_count % 2 else " story-model-b"
        version = f" · version {p.version} of {p.versions}" if p.versions > 1 else ""
        note = f'<span class="story-status">({STATUS_NOTE[p.status]})</span>' if p.status in STATUS_NOTE else ""
        title = html.escape(f"passage {i} · {who}{version}", quote=True)
        spans.append(f'<span class="story-{p.author}{shade}" data-n="{i}" title="{title}">{html.escape(p.text)}</span>{note}')
    return f'<div class="story-doc" id="story-doc">{"".join(spans)}{loading}</div>'


def passage_choices(view: StoryView) -> list[tuple[str, str]]:
    out = []
    for i, p in enumerate(view.passages, start=1):
        words = " ".join(p.text.split())
        snippet = words[:48] + ("…" if len(words) > 48 else "")
        out.append((f"#{i} {'you' if p.author == 'user' else 'model'} · {snippet or '(empty)'}", p.id))
    return out


def alternatives_label(view: StoryView) -> str:
    for p in reversed(view.passages):
        if p.versions > 1:
            n = view.passages.index(p) + 1
            return f"Passage {n} (numbered {n} in the text) · version **{p.version} of {p.versions}**"
    if view.passages and view.passages[-1].author == "model":
        return "The last passage has one version (↻ Retry writes another)"
    return ""


def inspector_markdown(report: dict[str, Any] | None) -> str:
    """The parts of the last context with their token counts, and what was cut."""
    if not report:
        return "*Nothing sent yet: press Continue and the exact context appears here.*"
    mode = "chat template (instruct model)" if report["mode"] == "instruct" else "plain text continuation (base model)"
    lines = [
        f"**{report['model']}** · {mode} · context window {report['context_window']:,} tokens, "
        f"{report['max_new_tokens']:,} kept for the reply → **{report['budget']:,}** for the story's context.",
        "",
        "| Part | Tokens | Characters |",
        "|---|---:|---:|",
    ]
    lines += [f"| {p['label']} | {p['tokens']:,} | {p['chars']:,} |" for p in report["parts"]]
    actual = f" (the model counted {report['prompt_tokens']:,} with its template)" if report.get("prompt_tokens") else ""
    lines.append(f"| **Total** | **{report['tokens']:,}**{actual} | |")
    if report.get("rendered_tokens"):
        lines += ["", f"As the model read it (below, after its template): **{report['rendered_tokens']:,} tokens**."]
    if report["cut"]:
        lines += ["", "**Cut to fit:**", ""]
        lines += [
            f"- {c['label']}: {c['chars']:,} characters" + (f", {c['tokens']:,} tokens" if c.get("tokens") else "")
            for c in report["cut"]
        ]
    else:
        lines += ["", "Nothing had to be cut."]
    return "\n".join(lines)


def sent_text(report: dict[str, Any] | None) -> str:
    """Exactly what was sent: the prompt as the model read it (after its template), or, for a story sent
    before that was kept, message by message."""
    if not report:
        return ""
    if report.get("rendered") is not None:
        return report["rendered"]
    return "\n\n".join(f"===== {m['role']} =====\n{m['content']}" for m in report["sent"])
