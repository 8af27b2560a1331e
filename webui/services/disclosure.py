"""What an exported chat or story says about itself: an explicit "AI-generated" label a person sees
first, and a provenance block — the studio and version, the models, the dates, and which passages
a person wrote and which the model wrote.

The same block goes into every export format: a label line at the top and a "Provenance" section
at the end of Markdown and plain text, and a `provenance` object in JSON (which the importers
ignore, so an export still imports unchanged). The HTTP API's generation responses are not touched.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .provenance import STUDIO, studio_version

PREVIEW = 60  # characters of a passage quoted in the Markdown / text block


@dataclass(frozen=True)
class Part:
    """One passage or message in reading order."""

    author: str  # "person" | "model"
    text: str
    model: str | None = None
    created_at: datetime | None = None
    ref: str | None = None  # its id in the JSON export


def _date(value: datetime | None) -> str | None:
    if value is None:
        return None
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat(timespec="seconds")


def block(kind: str, title: str, parts: list[Part], created_at: datetime | None = None,
          exported_at: datetime | None = None) -> dict[str, Any]:
    """The provenance of one chat or story as JSON-able data."""
    models = sorted({p.model for p in parts if p.author == "model" and p.model})
    by_model = [p for p in parts if p.author == "model"]
    dates = [p.created_at for p in parts if p.created_at]
    label = (f"AI-generated content: this {kind} contains text written by a language model"
             f" ({', '.join(models)})" if models or by_model else f"This {kind} holds no text written by a model")
    return {
        "label": f"{label}. Exported from {STUDIO} {studio_version()}.",
        "ai_generated": bool(by_model),
        "generator": {"name": STUDIO, "version": studio_version()},
        "kind": kind, "title": title, "models": models,
        "created_at": _date(created_at or (min(dates) if dates else None)),
        "last_written_at": _date(max(dates)) if dates else None,
        "exported_at": _date(exported_at or datetime.now(UTC)),
        "characters": {"person": sum(len(p.text) for p in parts if p.author != "model"),
                       "model": sum(len(p.text) for p in by_model)},
        "passages": [{"n": n, "author": p.author, "model": p.model if p.author == "model" else None,
                      "characters": len(p.text), "created_at": _date(p.created_at), **({"id": p.ref} if p.ref else {})}
                     for n, p in enumerate(parts, start=1)],
    }


def _quote(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= PREVIEW else flat[:PREVIEW - 1] + "…"


def _who(p: dict[str, Any]) -> str:
    return f"model ({p['model']})" if p["author"] == "model" and p["model"] else p["author"]


def markdown(info: dict[str, Any], title: str, body: str, parts: list[Part]) -> str:
    """The title, the label right under it, `body`, then the provenance section."""
    c = info["characters"]
    lines = [f"# {title}", "", f"> **{info['label']}**", "", body.rstrip("\n"), "", "---", "", "## Provenance", "",
             f"- Exported from {info['generator']['name']} {info['generator']['version']} on {info['exported_at']}",
             f"- Models: {', '.join(info['models']) or 'none'}",
             f"- Written from {info['created_at'] or '—'} to {info['last_written_at'] or '—'}",
             f"- Characters written by a person: {c['person']:,}; by a model: {c['model']:,}", "",
             "| # | Written by | When | Begins |", "|---:|---|---|---|"]
    for p, part in zip(info["passages"], parts, strict=True):
        quote = _quote(part.text).replace("|", "\\|")
        lines.append(f"| {p['n']} | {_who(p)} | {p['created_at'] or '—'} | {quote} |")
    return "\n".join(lines) + "\n"


def text(info: dict[str, Any], body: str, parts: list[Part]) -> str:
    c = info["characters"]
    lines = [info["label"].upper() if info["ai_generated"] else info["label"], "", body.rstrip("\n"), "", "-" * 40,
             "PROVENANCE",
             f"Exported from {info['generator']['name']} {info['generator']['version']} on {info['exported_at']}.",
             f"Models: {', '.join(info['models']) or 'none'}. Written from {info['created_at'] or '-'} to "
             f"{info['last_written_at'] or '-'}.",
             f"Characters written by a person: {c['person']:,}; by a model: {c['model']:,}.", "Passages:"]
    for p, part in zip(info["passages"], parts, strict=True):
        lines.append(f"  {p['n']}. {_who(p)}, {p['created_at'] or '-'}: \"{_quote(part.text)}\"")
    return "\n".join(lines) + "\n"
