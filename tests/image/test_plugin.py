"""The GAN and VAE plugins: per-image seeds, batch independence, interpolation, reconstruction, input preparation."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from generators.base import ImageEnd, InvalidOptionsError, LoadFailedError
from generators.image.plugin import GANParams, GANPlugin, VAEParams, VAEPlugin, resolve_weights, slerp
from generators.image.preprocess import prepare_image


@pytest.fixture(scope="module")
def gan() -> GANPlugin:
    plugin = GANPlugin("gan", {"weights": "builtin:gan-mnist32"})
    plugin.load()
    return plugin


@pytest.fixture(scope="module")
def vae() -> VAEPlugin:
    plugin = VAEPlugin("vae", {"weights": "builtin:vae-mnist32", "classifier": "builtin:classifier-mnist32"})
    plugin.load()
    return plugin


def test_class_names_are_known_before_loading() -> None:
    plugin = GANPlugin("g", {"weights": "builtin:gan-mnist32"})
    assert not plugin.loaded and plugin.class_names == [str(d) for d in range(10)] and plugin.image_size == (32, 32, 1)


def test_bad_weights_are_refused_with_the_shipped_names(tmp_path) -> None:
    with pytest.raises(LoadFailedError, match="gan-mnist32"):
        resolve_weights("builtin:nope")
    with pytest.raises(LoadFailedError, match="config.json"):
        GANPlugin("g", {"weights": str(tmp_path)})
    with pytest.raises(LoadFailedError, match="not a gan"):
        GANPlugin("g", {"weights": "builtin:vae-mnist32"})


def test_each_image_is_its_own_seed_whatever_the_batch(gan: GANPlugin) -> None:
    params = GANParams()
    batch = gan.sample([ImageEnd(d % 10, 100 + d) for d in range(16)], params)
    assert batch.pixels.shape == (16, 32, 32, 1) and batch.pixels.dtype == np.uint8
    alone = gan.sample([ImageEnd(5, 105)], params)
    assert np.array_equal(alone.pixels[0], batch.pixels[5])
    again = gan.sample([ImageEnd(d % 10, 100 + d) for d in range(16)], params)
    assert np.array_equal(again.pixels, batch.pixels)
    other = gan.sample([ImageEnd(5, 106)], params)
    assert not np.array_equal(other.pixels[0], alone.pixels[0])
    assert len(batch.weights_hash) == 16


def test_truncation_changes_the_latent_and_is_bounded(gan: GANPlugin) -> None:
    plain = gan.sample([ImageEnd(3, 1)], GANParams())
    truncated = gan.sample([ImageEnd(3, 1)], GANParams(truncation=0.5))
    assert not np.array_equal(plain.pixels, truncated.pixels)
    with pytest.raises(ValueError):
        GANParams(truncation=0)


def test_out_of_range_class_or_seed_is_a_clear_error(gan: GANPlugin) -> None:
    with pytest.raises(InvalidOptionsError, match="classes 0–9"):
        gan.sample([ImageEnd(10, 1)], GANParams())
    with pytest.raises(InvalidOptionsError, match="Seed"):
        gan.sample([ImageEnd(1, -5)], GANParams())


def test_interpolation_ends_are_the_two_samples(gan: GANPlugin, vae: VAEPlugin) -> None:
    for plugin, params in ((gan, GANParams()), (vae, VAEParams())):
        walk = plugin.interpolate(ImageEnd(3, 11), ImageEnd(8, 12), 7, params)
        assert walk.pixels.shape == (7, 32, 32, 1)
        ends = plugin.sample([ImageEnd(3, 11), ImageEnd(8, 12)], params)
        # soft class weights one-hot at the ends reproduce the hard-label samples (float sums may differ by 1/255)
        assert np.abs(walk.pixels[0].astype(int) - ends.pixels[0]).max() <= 1
        assert np.abs(walk.pixels[-1].astype(int) - ends.pixels[1]).max() <= 1
        assert len({f.tobytes() for f in walk.pixels}) == 7


def test_slerp_keeps_the_norm_between_two_latents() -> None:
    import torch

    a, b = torch.randn(1, 128, generator=torch.Generator().manual_seed(0)), torch.randn(1, 128)
    mid = slerp(a, b, torch.tensor([[0.5]]))
    assert abs(mid.norm() - (a.norm() + b.norm()) / 2) < 0.1 * a.norm()


def test_vae_reconstructs_and_rerenders_as_other_classes(vae: VAEPlugin) -> None:
    seven = vae.sample([ImageEnd(7, 3)], VAEParams(temperature=0.5)).pixels[0]
    assert vae.guess_label(seven) == 7
    out = vae.reconstruct(seven, 7, list(range(10)))
    assert out.pixels.shape == (10, 32, 32, 1)
    mse = ((out.pixels[7].astype(float) - seven) ** 2).mean()
    assert mse < 0.02 * 255**2, mse
    with pytest.raises(InvalidOptionsError, match="Expected a 32×32"):
        vae.reconstruct(np.zeros((28, 28, 1), np.uint8), 1, [1])


def _png(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="PNG")
    return out.getvalue()


def test_a_dark_digit_on_a_light_canvas_is_prepared_like_mnist(vae: VAEPlugin) -> None:
    canvas = np.full((280, 280), 255, np.uint8)
    canvas[60:220, 130:150] = 0  # a thick vertical stroke: a "1"
    x = prepare_image(_png(canvas), 32, 1)
    assert x.shape == (32, 32, 1) and x.max() == 255 and x[0].max() == 0  # white on black, border empty
    rows = np.nonzero(x[..., 0].max(1))[0]
    assert 18 <= rows.max() - rows.min() + 1 <= 24  # fitted into 20/28 of the side
    assert vae.guess_label(x) == 1


@pytest.mark.parametrize(
    ("data", "message"),
    [(b"not an image at all", "not an image"), (_png(np.zeros((4, 4), np.uint8)), "between 8 and"),
     (_png(np.full((40, 40), 255, np.uint8)), "blank")],
)
def test_bad_uploads_get_a_clear_message(data: bytes, message: str) -> None:
    with pytest.raises(InvalidOptionsError, match=message):
        prepare_image(data, 32, 1)
