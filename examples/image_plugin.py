"""An image plugin to copy: procedural textures (fractal value noise) in a few palettes, by class and seed.

Keep the shape: options and params models, `info` declaring its capabilities, `class_names`/`image_size`
(known before loading), `_load`/`_unload`, and `_sample`, which returns uint8 pixels (N, H, W, 3) and
reports each step to its `StepControl`; the contract (`ImageGenerator.sample`) checks the load and the
cancel, runs it on the compute lane and adds the stats. Register it like `examples/text_plugin.py`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
from pydantic import Field

from generators import base

PALETTES = {"sea": ((8, 24, 64), (130, 205, 235)), "fire": ((50, 0, 0), (255, 205, 40)), "moss": ((12, 32, 10), (160, 210, 90))}


class TextureOptions(base.StrictModel):
    size: int = Field(64, ge=16, le=512, multiple_of=16, description="width and height of an image, in pixels")


class TextureParams(base.StrictModel):
    steps: int = Field(5, ge=1, le=8, description="layers of detail, one per step, each finer and fainter")
    contrast: float = Field(1.5, ge=0.1, le=4.0, description="1 = as drawn; higher = deeper darks and brighter lights")


def smooth_noise(grid: np.ndarray, size: int) -> np.ndarray:
    """(N, c+1, c+1) random values eased between at size × size points: (N, size, size)."""
    t = np.linspace(0, grid.shape[1] - 1, size, endpoint=False)
    i, f = t.astype(int), t % 1
    f = f * f * (3 - 2 * f)  # smoothstep: no creases at the cell edges
    rows = grid[:, i] * (1 - f)[None, :, None] + grid[:, i + 1] * f[None, :, None]
    return rows[:, :, i] * (1 - f) + rows[:, :, i + 1] * f


class Textures(base.ImageGenerator):
    info = base.GeneratorInfo(
        plugin="example-textures", modality="image", family="procedural",
        description="fractal value-noise textures in a few palettes (an example plugin)",
        capabilities=frozenset({base.CAP_CLASS_CONDITIONAL, base.CAP_SEED, base.CAP_STEPS}),
        params=TextureParams, load_options=TextureOptions)

    @property
    def class_names(self) -> list[str]:
        return list(PALETTES)

    @property
    def image_size(self) -> tuple[int, int, int]:
        return self.options.size, self.options.size, 3

    def _load(self, progress: base.ProgressFn) -> None:
        progress("Mixing the palettes…")
        self.palettes = np.array(list(PALETTES.values()), dtype=np.float32)  # (classes, dark/light, RGB)
        self.version = hashlib.sha256(repr(PALETTES).encode()).hexdigest()[:16]  # what made the pixels

    def _unload(self) -> None:
        del self.palettes

    def _sample(self, ends: Sequence[base.ImageEnd], params: TextureParams,
                control: base.StepControl) -> base.ImageOutput:
        if any(not 0 <= e.label < len(PALETTES) for e in ends):
            raise base.InvalidOptionsError(f"class: pick one of 0–{len(PALETTES) - 1} ({', '.join(PALETTES)}).")
        rngs = [np.random.default_rng(e.seed) for e in ends]  # one per image: the same pixels alone or in a batch
        value, weight, colours = np.zeros((len(ends), *self.image_size[:2])), 0.0, self.palettes[[e.label for e in ends]]

        def pixels() -> np.ndarray:
            v = np.clip(0.5 + (value / weight - 0.5) * params.contrast, 0, 1)[..., None]  # (N, H, W, 1)
            return (colours[:, None, None, 0] * (1 - v) + colours[:, None, None, 1] * v).astype(np.uint8)

        for step in range(params.steps):  # octave `step`: 4 × 2^step cells across, half the weight of the last
            cells = 4 * 2**step
            value += smooth_noise(np.stack([r.random((cells + 1, cells + 1)) for r in rngs]), self.options.size) / 2**step
            weight += 1 / 2**step
            control.step(step + 1, params.steps, pixels)  # progress, a preview when due, and Stop between steps
        return base.ImageOutput(pixels(), self.version)
