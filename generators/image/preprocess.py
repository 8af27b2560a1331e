"""Turn a person's image (a photo of a digit, a drawing on a white canvas) into model input.

Grayscale models were trained on MNIST-style digits: white strokes on black, the digit
scaled into a 20/28 box and centred by its centre of mass. An upload is brought to that
form, so a dark digit drawn on a light canvas works as well as a real MNIST digit.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..base import InvalidOptionsError

MIN_SIDE, MAX_SIDE = 8, 4096
MAX_PIXELS = 4096 * 4096


def open_image(source: Any) -> Image.Image:
    """A PIL image from a path, bytes, a numpy array or a PIL image, with clear errors."""
    if isinstance(source, Image.Image):
        image = source
    elif isinstance(source, np.ndarray):
        if source.ndim not in (2, 3) or source.size == 0:
            raise InvalidOptionsError(f"Expected an image array (height × width [× channels]), got shape {source.shape}.")
        image = Image.fromarray(source.astype(np.uint8) if source.dtype != np.uint8 else source)
    else:
        data = source if isinstance(source, bytes) else None
        try:
            if data is None:
                path = Path(source)
                if not path.is_file():
                    raise InvalidOptionsError("The uploaded file is missing; upload it again.")
                data = path.read_bytes()
            image = Image.open(io.BytesIO(data))
            image.load()
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
            raise InvalidOptionsError("That file is not an image this studio can read (PNG, JPEG, GIF, WebP or BMP).") from None
        except Image.DecompressionBombError:
            raise InvalidOptionsError(f"That image is too large (at most {MAX_PIXELS:,} pixels).") from None
    w, h = image.size
    if min(w, h) < MIN_SIDE or max(w, h) > MAX_SIDE:
        raise InvalidOptionsError(
            f"The image is {w}×{h} px; use one between {MIN_SIDE} and {MAX_SIDE} px on each side.")
    return image


def _alpha_on_white(image: Image.Image) -> Image.Image:
    """Transparent canvases (sketch pads) become strokes on white."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image


def prepare_digit(image: Image.Image, size: int) -> np.ndarray:
    """MNIST-style (size, size, 1) uint8: white digit on black, fitted into 20/28 of the side, centred by mass."""
    gray = np.asarray(_alpha_on_white(image).convert("L"), dtype=np.float32)
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    if np.median(border) > 127:  # dark strokes on a light background: invert
        gray, border = 255.0 - gray, 255.0 - border
    gray = np.clip(gray - np.median(border), 0, 255)  # background to 0
    ink = gray > 0.15 * gray.max() if gray.max() > 0 else np.zeros_like(gray, bool)
    if ink.sum() == 0:
        raise InvalidOptionsError("The image looks blank: draw or upload a digit (dark on light or light on dark).")
    rows, cols = np.nonzero(ink)
    crop = gray[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    box = max(1, round(size * 20 / 28))
    h, w = crop.shape
    scale = box / max(h, w)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    digit = np.asarray(Image.fromarray(crop.astype(np.uint8)).resize((new_w, new_h), Image.LANCZOS), dtype=np.float32)
    canvas = np.zeros((size, size), np.float32)
    total = digit.sum()
    ys, xs = np.mgrid[0:new_h, 0:new_w]
    cy, cx = ((ys * digit).sum() / total, (xs * digit).sum() / total) if total > 0 else (new_h / 2, new_w / 2)
    top = int(np.clip(round(size / 2 - cy), 0, size - new_h))
    left = int(np.clip(round(size / 2 - cx), 0, size - new_w))
    canvas[top:top + new_h, left:left + new_w] = digit
    if canvas.max() > 0:
        canvas *= 255.0 / canvas.max()
    return canvas.round().astype(np.uint8)[..., None]


def prepare_image(source: Any, size: int, channels: int, digit_style: bool = True) -> np.ndarray:
    """(size, size, channels) uint8 model input from any readable image."""
    image = open_image(source)
    if channels == 1 and digit_style:
        return prepare_digit(image, size)
    image = ImageOps.fit(_alpha_on_white(image).convert("L" if channels == 1 else "RGB"), (size, size), Image.BILINEAR)
    array = np.asarray(image, dtype=np.uint8)
    return array[..., None] if channels == 1 else array
