"""PNG sample grids and loss curves drawn with PIL (no matplotlib)."""
from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

PANEL_W, PANEL_H, MARGIN = 520, 170, 42
COLORS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189)]


def image_grid(images: torch.Tensor, ncol: int, padding: int = 2, scale: int = 1) -> Image.Image:
    """(N, C, H, W) in [0, 1] -> one PIL image, ``ncol`` per row, white gutters."""
    n, c, h, w = images.shape
    nrow = math.ceil(n / ncol)
    pixels = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    canvas = np.full((nrow * (h + padding) + padding, ncol * (w + padding) + padding, c), 255, np.uint8)
    for i in range(n):
        r, col = divmod(i, ncol)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        canvas[top:top + h, left:left + w] = pixels[i]
    grid = Image.fromarray(canvas[..., 0] if c == 1 else canvas)
    return grid.resize((grid.width * scale, grid.height * scale), Image.NEAREST) if scale > 1 else grid


def save_grid(images: torch.Tensor, ncol: int, path: str | os.PathLike, scale: int = 2) -> None:
    image_grid(images, ncol, scale=scale).save(path)


def _panel(draw: ImageDraw.ImageDraw, top: int, name: str, xs: Sequence[float], ys: Sequence[float],
           color: tuple[int, int, int]) -> None:
    """One metric against epochs inside the band starting at ``top``."""
    left, right, bottom = MARGIN + 20, PANEL_W - 12, top + PANEL_H - 24
    upper = top + 20
    draw.rectangle([left, upper, right, bottom], outline=(160, 160, 160))
    finite = [(x, y) for x, y in zip(xs, ys, strict=True) if y is not None and math.isfinite(y)]
    last = f"{finite[-1][1]:.4g}" if finite else "n/a"
    draw.text((left, top + 4), f"{name}  (last {last})", fill=(0, 0, 0))
    if not finite:
        return
    x0, x1 = min(x for x, _ in finite), max(x for x, _ in finite)
    y0, y1 = min(y for _, y in finite), max(y for _, y in finite)
    if y1 - y0 < 1e-12:
        y0, y1 = y0 - 0.5, y1 + 0.5
    x1 = x1 if x1 > x0 else x0 + 1

    def to_xy(x: float, y: float) -> tuple[float, float]:
        return (left + (x - x0) / (x1 - x0) * (right - left), bottom - (y - y0) / (y1 - y0) * (bottom - upper))

    draw.text((2, upper - 2), f"{y1:.4g}", fill=(90, 90, 90))
    draw.text((2, bottom - 10), f"{y0:.4g}", fill=(90, 90, 90))
    draw.text((left, bottom + 4), f"epoch {x0:g}", fill=(90, 90, 90))
    draw.text((right - 60, bottom + 4), f"epoch {x1:g}", fill=(90, 90, 90))
    points = [to_xy(x, y) for x, y in finite]
    if len(points) == 1:
        px, py = points[0]
        draw.ellipse([px - 2, py - 2, px + 2, py + 2], fill=color)
    else:
        draw.line(points, fill=color, width=2)


def draw_curves(history: Sequence[dict[str, float]], keys: Sequence[str], path: str | os.PathLike) -> None:
    """One panel per metric in ``keys`` against the ``epoch`` field of each history row."""
    image = Image.new("RGB", (PANEL_W, PANEL_H * max(1, len(keys))), "white")
    draw = ImageDraw.Draw(image)
    xs = [row["epoch"] for row in history]
    for i, key in enumerate(keys):
        _panel(draw, i * PANEL_H, key, xs, [row.get(key) for row in history], COLORS[i % len(COLORS)])
    image.save(path)
