"""An AppContext with the shipped GAN and VAE (small enough for unit tests: no training, < 1 s to load)."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture
def image_ctx(make_ctx: Any) -> Any:
    def build(**settings: Any) -> Any:
        return make_ctx(images=True, **settings)

    return build


# ------------------------------------------------------------------ a tiny Stable Diffusion pipeline


@pytest.fixture(scope="session")
def tiny_sd_folder(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A random-weight SD pipeline folder built from configs (tests/image/tiny_diffusers.py), with two
    LoRAs: `style` made for it, `other-model` made for a UNet of another width."""
    from tests.image.tiny_diffusers import save_tiny_lora, save_tiny_pipeline

    folder = save_tiny_pipeline(tmp_path_factory.mktemp("tiny-sd") / "tiny-sd")
    save_tiny_lora(folder, folder / "loras" / "style.safetensors")
    save_tiny_lora(None, folder / "loras" / "other-model.safetensors", cross_attention_dim=16)
    return folder


@pytest.fixture(scope="session")
def tiny_sd(tiny_sd_folder: Any) -> Any:
    """The diffusers plugin loaded on that folder, as a user's model (loaded once for the session)."""
    from generators.image.diffusers_plugin import DiffusersPlugin

    gen = DiffusersPlugin("tiny-sd", {"source": str(tiny_sd_folder)})
    gen.load()
    return gen


@pytest.fixture
def paint_ctx(make_ctx: Any, tiny_sd: Any, tiny_sd_folder: Any) -> Any:
    """The shipped GAN and VAE plus `tiny-sd` (sharing the session's loaded pipeline)."""
    from generators.image.diffusers_plugin import DiffusersPlugin
    from generators.registry import ModelSpec

    def build(**settings: Any) -> Any:
        ctx = make_ctx(images=True, **settings)
        ctx.registry.plugins["diffusers"] = DiffusersPlugin
        ctx.registry.add(ModelSpec("tiny-sd", "diffusers", {"source": str(tiny_sd_folder)}))
        ctx.registry._slots["tiny-sd"].generator = tiny_sd
        return ctx

    return build
