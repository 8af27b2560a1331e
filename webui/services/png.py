"""PNG and GIF files that carry how they were made.

Every PNG gets two text chunks: ``aigc-studio`` (JSON with everything needed to make the image
again: generator, weights hash, class or prompt, seed, settings) and ``parameters`` — for a prompted
image the Stable Diffusion web UI's infotext (see `infotext`), so A1111 and Civitai read it; for a
class-conditional one a readable line. A PNG with only A1111's ``parameters`` is read too.
Encoding is deterministic — the same pixels and parameters give the same bytes — so "same seed,
same file" can be checked with a hash.
"""

from __future__ import annotations

import hashlib
import io
import json
from typing import Any

import numpy as np
from PIL import Image, PngImagePlugin

from generators.base import InvalidOptionsError
from generators.image.preprocess import open_image

from . import infotext

META_KEY = "aigc-studio"
READABLE_KEY = "parameters"
META_FORMAT = "aigc-studio.image.v1"
PAD = 2  # gutter between tiles, white


def to_pil(pixels: np.ndarray) -> Image.Image:
    """(H, W, C) uint8 -> PIL L or RGB."""
    return Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)


def readable(meta: dict[str, Any]) -> str:
    if meta.get("kind") == "paint":
        return infotext.write(meta)
    parts = [f"{meta.get('kind', 'sample')} by {meta.get('generator')} "
             f"({meta.get('plugin')}, weights {meta.get('weights_hash')})"]
    if meta.get("kind") == "grid":  # the page's view of a batch: it lists the images it shows
        ids = [i.get("id") for i in meta.get("images") or []]
        return f"{parts[0]}, a grid of {len(ids)} {meta.get('shows', 'image')} image(s): {', '.join(ids)}"
    if meta.get("kind") == "interpolation":
        start, end = meta.get("start", {}), meta.get("end", {})
        parts.append(f"from class {start.get('class_name')} seed {start.get('seed')} to class {end.get('class_name')} "
                     f"seed {end.get('seed')}, {meta.get('frames')} frames")
    else:
        parts.append(f"class {meta.get('class_name')}")
        if meta.get("seed") is not None:
            parts.append(f"seed {meta.get('seed')}")
    parts += [f"{k} {v}" for k, v in sorted((meta.get("params") or {}).items()) if v is not None]
    return ", ".join(parts)


def encode_png(image: Image.Image, meta: dict[str, Any]) -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_text(META_KEY, json.dumps({"format": META_FORMAT, **meta}, sort_keys=True, separators=(",", ":")))
    info.add_text(READABLE_KEY, readable(meta))
    out = io.BytesIO()
    image.save(out, format="PNG", pnginfo=info, compress_level=6)
    return out.getvalue()


def encode_gif(frames: list[Image.Image], ms_per_frame: int = 120) -> bytes:
    """An endless ping-pong loop (forth and back) of the frames, scaled up for viewing."""
    scale = max(1, 128 // max(frames[0].size))
    big = [f.resize((f.width * scale, f.height * scale), Image.NEAREST).convert("L" if f.mode == "L" else "RGB")
           for f in frames]
    loop = big + big[-2:0:-1]
    out = io.BytesIO()
    loop[0].save(out, format="GIF", save_all=True, append_images=loop[1:], duration=ms_per_frame, loop=0)
    return out.getvalue()


def tile(pixels: np.ndarray, cols: int, scale: int = 1) -> Image.Image:
    """(N, H, W, C) uint8 -> one grid image, `cols` per row, white gutters."""
    n, h, w, c = pixels.shape
    rows = -(-n // cols)
    canvas = np.full((rows * (h + PAD) + PAD, cols * (w + PAD) + PAD, c), 255, np.uint8)
    for i in range(n):
        r, k = divmod(i, cols)
        canvas[PAD + r * (h + PAD):PAD + r * (h + PAD) + h, PAD + k * (w + PAD):PAD + k * (w + PAD) + w] = pixels[i]
    image = to_pil(canvas)
    return image.resize((image.width * scale, image.height * scale), Image.NEAREST) if scale > 1 else image


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_meta(source: Any) -> dict[str, Any]:
    """The ``aigc-studio`` parameters of a PNG (path, bytes or PIL image), or a clear error."""
    image = open_image(source)
    text = getattr(image, "text", None) or image.info
    raw = text.get(META_KEY) if isinstance(text, dict) else None
    foreign = text.get(READABLE_KEY) if isinstance(text, dict) else None
    if not raw and isinstance(foreign, str) and foreign.strip():
        return infotext.to_meta(foreign)  # a PNG of the Stable Diffusion web UI (or another tool writing its format)
    if not raw:
        raise InvalidOptionsError(
            "This image carries no AIGC Studio parameters (only PNGs saved by the studio do; "
            "a screenshot or a re-saved copy loses them).")
    try:
        meta = json.loads(raw)
    except ValueError:
        raise InvalidOptionsError("The image's AIGC Studio parameters are damaged (not valid JSON).") from None
    if not isinstance(meta, dict) or meta.get("format") != META_FORMAT:
        raise InvalidOptionsError(f"Unknown parameter format {meta.get('format') if isinstance(meta, dict) else None!r}; "
                                  f"this studio reads {META_FORMAT}.")
    return meta
