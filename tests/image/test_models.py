"""Fast tests of the image models on tiny configs (no committed weights needed)."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from generators.image.checkpoint import TRAINING_STATE_FILE, load_model, load_training_state, save_model
from generators.image.classifier import Classifier, ClassifierConfig
from generators.image.data import load_dataset, load_mnist5k
from generators.image.evaluate import Row, balanced_labels, format_table, frechet_distance
from generators.image.gan import Discriminator, GANConfig, Generator, ema_decay, sample_latent
from generators.image.train import TrainOptions, parse_args, train
from generators.image.vae import VAE, VAEConfig

TINY_GAN = GANConfig(num_classes=3, z_dim=8, g_width=4, d_width=4)
TINY_VAE = VAEConfig(num_classes=3, z_dim=4, width=4, hidden=16, class_dim=4)
TINY_CLASSIFIER = ClassifierConfig(num_classes=3, width=4, feature_dim=8)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _image_folder(root: Path, classes: list[str], per_class: int = 4, size: int = 28, mode: str = "L") -> Path:
    """Random blobs saved as PNGs; one sub-folder per class ('' -> images directly in root)."""
    rng = np.random.RandomState(0)
    for c, name in enumerate(classes):
        folder = root / name if name else root
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            shape = (size, size) if mode == "L" else (size, size + 6, 3)
            pixels = (rng.rand(*shape) * 255 * (c + 1) / len(classes)).astype(np.uint8)
            Image.fromarray(pixels, mode).save(folder / f"{i}.png")
    return root


# ---------------------------------------------------------------------------- data

def test_mnist5k_split_is_fixed_per_class_and_disjoint() -> None:
    train_set, held_out = load_mnist5k(32, "train"), load_mnist5k(32, "eval")
    assert train_set.images.shape == (4000, 1, 32, 32) and held_out.images.shape == (1000, 1, 32, 32)
    assert torch.bincount(train_set.labels).tolist() == [400] * 10
    assert torch.bincount(held_out.labels).tolist() == [100] * 10
    assert 0.0 <= float(train_set.images.min()) and float(train_set.images.max()) <= 1.0
    assert float(train_set.images[:, :, :2].abs().sum()) == 0.0  # 2 px zero padding
    flat_train = {tuple(x.flatten().tolist()[::7]) for x in train_set.images[:300]}
    assert not any(tuple(x.flatten().tolist()[::7]) in flat_train for x in held_out.images)
    assert load_mnist5k(64, "eval").images.shape == (1000, 1, 64, 64)
    assert torch.equal(load_mnist5k(32, "eval").images, held_out.images)  # same split every time


def test_folder_datasets(tmp_path: Path) -> None:
    conditional = load_dataset(str(_image_folder(tmp_path / "c", ["cat", "dog"])), size=32)
    assert conditional.conditional and conditional.class_names == ["cat", "dog"]
    assert conditional.images.shape == (8, 1, 32, 32) and conditional.labels.tolist() == [0] * 4 + [1] * 4
    flat = load_dataset(str(_image_folder(tmp_path / "u", [""], mode="RGB")), size=64)
    assert not flat.conditional and flat.num_classes == 1 and flat.images.shape == (4, 3, 64, 64)
    assert flat.to_range(-1, 1).min() >= -1 and flat.to_range(-1, 1).max() <= 1
    with pytest.raises(ValueError, match="size"):
        load_dataset("mnist5k", size=48)


# ---------------------------------------------------------------------------- GAN

@pytest.mark.parametrize("size", [32, 64])
def test_gan_shapes(size: int) -> None:
    config = dataclasses.replace(TINY_GAN, size=size, channels=3)
    G, D = Generator(config), Discriminator(config)
    y = torch.tensor([0, 1, 2, 1])
    images = G(torch.randn(4, config.z_dim), y)
    assert images.shape == (4, 3, size, size) and images.abs().max() <= 1
    assert D(images, y).shape == (4,)
    G.eval()
    sample = G.sample(y, generator=torch.Generator().manual_seed(0))
    assert sample.shape == (4, 3, size, size) and 0 <= sample.min() and sample.max() <= 1


def test_gan_sampling_is_deterministic_for_a_seed() -> None:
    G = Generator(TINY_GAN).eval()
    y = torch.arange(3)
    a = G.sample(y, truncation=1.0, generator=torch.Generator().manual_seed(7))
    b = G.sample(y, truncation=1.0, generator=torch.Generator().manual_seed(7))
    c = G.sample(y, truncation=1.0, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_truncation_reduces_latent_magnitude() -> None:
    plain = sample_latent(2000, 16, None, torch.Generator().manual_seed(0))
    truncated = sample_latent(2000, 16, 0.5, torch.Generator().manual_seed(0))
    assert truncated.abs().max() <= 0.5 < plain.abs().max()
    assert truncated.abs().mean() < plain.abs().mean()
    with pytest.raises(ValueError):
        sample_latent(2, 4, truncation=0.0)


def test_ema_decay_warms_up() -> None:
    assert ema_decay(0) == pytest.approx(0.1) and ema_decay(10**6) == 0.999
    assert all(ema_decay(s) <= ema_decay(s + 1) for s in range(100))


def test_batchnorm_recalibration_changes_running_stats() -> None:
    G = Generator(TINY_GAN)
    before = G.out_norm.bn.running_var.clone()
    G.recalibrate_batchnorm(2, 8, torch.Generator().manual_seed(0))
    assert not torch.equal(before, G.out_norm.bn.running_var)
    assert G.training  # mode restored


# ---------------------------------------------------------------------------- VAE

def test_vae_shapes_and_methods() -> None:
    vae = VAE(TINY_VAE).eval()
    x, y = torch.rand(5, 1, 32, 32), torch.tensor([0, 1, 2, 0, 1])
    mu, logvar = vae.encode(x, y)
    assert mu.shape == logvar.shape == (5, TINY_VAE.z_dim)
    assert vae.decode(mu, y).shape == (5, 1, 32, 32)
    assert vae.reconstruct(x, y).shape == (5, 1, 32, 32)
    sample = vae.sample(y, temperature=0.5, generator=torch.Generator().manual_seed(0))
    assert sample.shape == (5, 1, 32, 32) and 0 <= sample.min() and sample.max() <= 1
    assert torch.equal(sample, vae.sample(y, 0.5, torch.Generator().manual_seed(0)))
    big = VAE(dataclasses.replace(TINY_VAE, size=64, channels=3)).eval()
    assert big.reconstruct(torch.rand(2, 3, 64, 64), y[:2]).shape == (2, 3, 64, 64)


def test_vae_bounds_are_finite_and_iwae_is_tighter() -> None:
    vae = VAE(TINY_VAE).eval()
    x, y = torch.rand(16, 1, 32, 32), torch.arange(16) % 3
    terms = vae.elbo(x, y, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(terms.loss).all() and (terms.kl >= 0).all()
    # log p(x) >= IWAE_k >= ELBO in expectation: compare averages over many one-sample ELBOs
    elbo = torch.stack([-vae.elbo(x, y, generator=torch.Generator().manual_seed(s)).loss for s in range(20)]).mean()
    iwae = vae.iwae_bound(x, y, k=50, generator=torch.Generator().manual_seed(0), chunk=16)
    assert torch.isfinite(iwae).all() and iwae.shape == (16,)
    assert iwae.mean() >= elbo - 0.05


# ---------------------------------------------------------------------------- checkpoints

@pytest.mark.parametrize("model_type, model", [
    ("gan", lambda: Generator(TINY_GAN)),
    ("vae", lambda: VAE(TINY_VAE)),
    ("classifier", lambda: Classifier(TINY_CLASSIFIER)),
])
def test_safetensors_round_trip_gives_equal_outputs(tmp_path: Path, model_type: str, model) -> None:
    original = model().eval()
    save_model(tmp_path, original, model_type, ["a", "b", "c"], training={"note": "test"})
    meta = json.loads((tmp_path / "config.json").read_text())
    assert meta["model_type"] == model_type and meta["class_names"] == ["a", "b", "c"]
    loaded = load_model(tmp_path)
    assert loaded.config == original.config and loaded.training == {"note": "test"}
    y = torch.tensor([0, 2])
    if model_type == "gan":
        z = torch.randn(2, TINY_GAN.z_dim)
        assert torch.equal(original(z, y), loaded.model(z, y))
    elif model_type == "vae":
        z = torch.randn(2, TINY_VAE.z_dim)
        assert torch.equal(original.decode(z, y), loaded.model.decode(z, y))
    else:
        x = torch.rand(2, 1, 32, 32)
        assert torch.equal(original(x), loaded.model(x))


def test_save_model_rejects_wrong_type(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        save_model(tmp_path, VAE(TINY_VAE), "gan", ["a", "b", "c"])


# ---------------------------------------------------------------------------- training

TINY_OVERRIDES = {
    "gan": {"z_dim": "8", "g_width": "4", "d_width": "4", "bn_calibration_batches": "2"},
    "vae": {"z_dim": "4", "width": "4", "hidden": "16", "class_dim": "4"},
    "classifier": {"width": "4", "feature_dim": "8"},
}


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return load_training_state(out / TRAINING_STATE_FILE)["trainer"]


@pytest.mark.parametrize("model_type", ["gan", "vae", "classifier"])
def test_training_checkpoints_resumes_and_is_deterministic(tmp_path: Path, model_type: str) -> None:
    data = str(_image_folder(tmp_path / "data", ["x", "y"], per_class=5))

    def run(out: str, epochs: int, resume: bool = False):
        return train(TrainOptions(model_type, data, 32, epochs, tmp_path / out, batch_size=4, seed=3,
                                  resume=resume, overrides=TINY_OVERRIDES[model_type], progress=False))

    run("straight", 2)
    run("resumed", 1)
    state = load_training_state(tmp_path / "resumed" / TRAINING_STATE_FILE)
    assert state["epoch"] == 1 and len(state["history"]) == 1
    result = run("resumed", 2, resume=True)
    assert result.last["epoch"] == 2
    straight, resumed = _weights(tmp_path / "straight"), _weights(tmp_path / "resumed")
    key = {"gan": "G", "vae": "vae", "classifier": "model"}[model_type]
    for name, tensor in straight[key].items():
        assert torch.equal(tensor, resumed[key][name]), name
    out = tmp_path / "resumed"
    assert (out / "curves.png").is_file() and (out / "model.safetensors").is_file()
    if model_type != "classifier":
        assert (out / "samples_epoch002.png").is_file()
    loaded = load_model(out)
    assert loaded.model_type == model_type and loaded.class_names == ["x", "y"]


def test_train_rejects_unknown_override(tmp_path: Path) -> None:
    data = str(_image_folder(tmp_path / "data", ["x", "y"], per_class=2))
    with pytest.raises(ValueError, match="unknown --set key"):
        train(TrainOptions("vae", data, 32, 1, tmp_path / "o", overrides={"nope": "1"}, progress=False))


def test_parse_args() -> None:
    options = parse_args(["gan", "--epochs", "3", "--out", "/tmp/x", "--set", "z_dim=64", "--resume"])
    assert options.model == "gan" and options.epochs == 3 and options.resume
    assert options.overrides == {"z_dim": "64"} and options.data == "mnist5k"


# ---------------------------------------------------------------------------- evaluation helpers

def test_frechet_distance() -> None:
    a = torch.randn(500, 6, generator=torch.Generator().manual_seed(0))
    b = a + 1.0  # mean shift only: FD = 6 * 1^2
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance(a, b) == pytest.approx(6.0, rel=1e-6)
    c = 2 * a  # scale: tr(S + 4S - 2*2S) = tr(S)
    assert frechet_distance(a - a.mean(0), c - c.mean(0)) == pytest.approx(float(torch.cov(a.T).trace()), rel=1e-6)


def test_table_formats() -> None:
    rows = [Row("GAN", "accuracy", 0.98, ">= 0.97"), Row("VAE", "-ELBO", 98.123)]
    assert "| GAN | accuracy | 0.9800 | >= 0.97 |" in format_table(rows, markdown=True)
    assert "98.12" in format_table(rows)
    assert balanced_labels(20, 10).tolist() == [c for c in range(10) for _ in range(2)]
