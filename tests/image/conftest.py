"""An AppContext with the shipped GAN and VAE (small enough for unit tests: no training, < 1 s to load)."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture
def image_ctx(make_ctx: Any) -> Any:
    def build(**settings: Any) -> Any:
        return make_ctx(images=True, **settings)

    return build
