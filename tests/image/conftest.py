"""An AppContext with the shipped GAN and VAE (small enough for unit tests: no training, < 1 s to load)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest


@pytest.fixture
def image_ctx(tmp_path: Path) -> Any:
    from generators.image.plugin import GANPlugin, VAEPlugin
    from generators.registry import ModelSpec, Registry
    from storage import Store
    from webui.services.context import AppContext
    from webui.settings import Settings, default_models

    made: list[Any] = []

    def build(**settings: Any) -> Any:
        entries = [m for m in default_models() if m.plugin in ("gan", "vae")]
        s = Settings(data_dir=tmp_path / "data", models=entries, **settings)
        store = Store(s.database_url, s.data_dir)
        reg = Registry({"gan": GANPlugin, "vae": VAEPlugin})
        for e in entries:
            reg.add(ModelSpec(e.name, e.plugin, e.options))
        ctx = AppContext(settings=s, registry=reg, store=store)
        made.append(ctx)
        return ctx

    yield build
    for ctx in made:
        ctx.store.close()
