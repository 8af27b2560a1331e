"""The visible "AI-generated" mark: a small label in an image's bottom-right corner.

The label a person sees (China's labelling measures ask for one beside the metadata's; the EU AI Act
asks that deepfakes be disclosed). Off by default; each owner can turn it on for their images, and
each request can override that. Drawing is deterministic (Pillow's bundled font at a size chosen from
the image), so a re-run of a labelled image is still the same image. An image too narrow for
"AI-generated" gets "AI".
"""

from __future__ import annotations

from typing import Any

FULL, SHORT = "AI-generated", "AI"
MAX_SHARE = 0.6  # the label's box takes at most this share of the image's width


def _font(height: int) -> Any:
    from PIL import ImageFont

    return ImageFont.load_default(size=max(8, min(24, round(height / 10))))


def stamp(image: Any) -> Any:
    """A copy of the PIL image with the label in its bottom-right corner (light text on a dark box)."""
    from PIL import ImageDraw

    out = image.convert("RGB") if image.mode not in ("L", "RGB") else image.copy()
    font = _font(out.height)
    pad = max(1, font.size // 6)
    for text in (FULL, SHORT):
        left, top, right, bottom = font.getbbox(text)
        width, height = right - left + 2 * pad, bottom - top + 2 * pad
        if width <= MAX_SHARE * out.width or text == SHORT:
            break
    x0, y0 = max(0, out.width - width), max(0, out.height - height)
    dark, light = (0, 255) if out.mode == "L" else ((0, 0, 0), (255, 255, 255))
    draw = ImageDraw.Draw(out)
    draw.rectangle((x0, y0, out.width - 1, out.height - 1), fill=dark)
    draw.text((x0 + pad - left, y0 + pad - top), text, font=font, fill=light)
    return out
