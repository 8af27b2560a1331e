"""The committed default image weights load and do what the model card says (no training)."""
from __future__ import annotations

from pathlib import Path

import torch

from generators.image.checkpoint import load_model
from generators.image.evaluate import balanced_labels, generate

WEIGHTS = Path(__file__).resolve().parents[2] / "generators" / "image" / "weights"


def test_gan_draws_the_requested_digit() -> None:
    gan = load_model(WEIGHTS / "gan-mnist32")
    classifier = load_model(WEIGHTS / "classifier-mnist32").model
    assert gan.class_names == [str(d) for d in range(10)]
    assert sum(p.numel() for p in gan.model.parameters()) < 2_000_000
    labels = balanced_labels(200, 10)
    images = generate(gan, labels, seed=0)
    assert images.shape == (200, 1, 32, 32)
    accuracy = (classifier.predict(images) == labels).float().mean().item()
    assert accuracy >= 0.9, accuracy


def test_vae_samples_and_bounds() -> None:
    vae = load_model(WEIGHTS / "vae-mnist32")
    labels = balanced_labels(20, 10)
    images = generate(vae, labels, seed=0)
    assert images.shape == (20, 1, 32, 32) and 0 <= images.min() and images.max() <= 1
    x = images.round()
    iwae = vae.model.iwae_bound(x, labels, k=10, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(iwae).all()


def test_diffusion_draws_the_requested_digit() -> None:
    diffusion = load_model(WEIGHTS / "diffusion-mnist32")
    classifier = load_model(WEIGHTS / "classifier-mnist32").model
    assert diffusion.model_type == "diffusion" and diffusion.class_names == [str(d) for d in range(10)]
    assert sum(p.numel() for p in diffusion.model.parameters()) < 3_000_000
    labels = balanced_labels(50, 10)
    images = generate(diffusion, labels, seed=0, steps=10, guidance=2.0)
    assert images.shape == (50, 1, 32, 32) and 0 <= images.min() and images.max() <= 1
    accuracy = (classifier.predict(images) == labels).float().mean().item()
    assert accuracy >= 0.9, accuracy
