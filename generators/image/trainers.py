"""One trainer per model type: the per-step update, per-epoch monitoring, sample grids, export.

The epoch loop, checkpointing and command line live in ``train.py``; a trainer only knows its
models and optimizers. Each has a typed training config whose fields ``--set`` can override.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn as nn
import torch.nn.functional as F

from .classifier import Classifier, ClassifierConfig
from .data import ImageDataset
from .diffusion import DEFAULT_SCHEDULER, DiffusionConfig, DigitDiffusion, min_snr_weight
from .gan import EMA, Discriminator, GANConfig, Generator, discriminator_hinge_loss, generator_hinge_loss
from .plots import save_grid
from .vae import VAE, VAEConfig


@dataclass
class GANTrainConfig:
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    ema_max_decay: float = 0.999
    bn_calibration_batches: int = 50  # standing BatchNorm statistics of the exported EMA generator


@dataclass
class VAETrainConfig:
    lr: float = 1e-3
    weight_decay: float = 0.0
    kl_warmup_steps: int = 0        # linear 0 -> 1 weight on the KL term (0: none)
    max_shift: int = 0              # random translation augmentation, pixels (0: none)
    ema_max_decay: float = 0.999    # the exported VAE is an EMA of the weights (0: no EMA)


@dataclass
class ClassifierTrainConfig:
    lr: float = 1e-3
    weight_decay: float = 1e-4
    max_shift: int = 2              # random translation augmentation, pixels


@dataclass
class DiffusionTrainConfig:
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 200         # linear learning-rate warm-up
    grad_clip: float = 1.0          # max gradient norm (0: none)
    p_uncond: float = 0.1           # label dropout to the null class: trains the unconditional model for guidance
    min_snr_gamma: float = 5.0      # Min-SNR-γ loss weighting (0: plain MSE)
    ema_max_decay: float = 0.999    # the exported model is an EMA of the weights
    sample_steps: int = 20          # per-epoch sample grid: steps, guidance
    sample_guidance: float = 2.0


class Trainer(Protocol):
    model_type: str
    value_range: tuple[float, float]  # what the model eats: images are mapped from [0, 1]
    curve_keys: list[str]

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]: ...
    def end_epoch(self) -> dict[str, float]: ...
    def save_samples(self, path: Path) -> None: ...
    def export_model(self) -> nn.Module: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def _grid_labels(num_classes: int, per_row: int = 10, max_rows: int = 16) -> torch.Tensor:
    """Rows = classes (or 8 rows of the single class of an unconditional model)."""
    rows = 8 if num_classes == 1 else min(num_classes, max_rows)
    return (torch.arange(rows) % num_classes).repeat_interleave(per_row)


class GANTrainer:
    model_type = "gan"
    value_range = (-1.0, 1.0)
    curve_keys = ["d_loss", "g_loss", "d_real", "d_fake"]

    def __init__(self, config: GANConfig, train: GANTrainConfig, device: torch.device, seed: int,
                 data: ImageDataset, eval_data: ImageDataset | None = None) -> None:
        self.config, self.train_config, self.device, self.seed = config, train, device, seed
        self.G = Generator(config)
        self.G.init_output_bias(data.to_range(-1, 1).mean(dim=(0, 2, 3)))  # (channels,)
        self.G.to(device)
        self.D = Discriminator(config).to(device)
        self.ema = EMA(self.G, train.ema_max_decay)
        betas = (train.beta1, train.beta2)
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=train.lr_g, betas=betas)
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=train.lr_d, betas=betas)
        noise = torch.Generator().manual_seed(seed + 1)  # fixed grid noise, off the global RNG
        self.grid_labels = _grid_labels(config.num_classes)
        self.grid_z = torch.randn(len(self.grid_labels), config.z_dim, generator=noise)

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        b = x.shape[0]
        # discriminator: real images vs fakes of the same classes, one batch through D
        with torch.no_grad():
            fake = self.G(torch.randn(b, self.config.z_dim, device=self.device), y)
        logits = self.D(torch.cat([x, fake]), torch.cat([y, y]))  # (2B,)
        d_loss = discriminator_hinge_loss(logits[:b], logits[b:])
        self.opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        self.opt_d.step()
        # generator: fool D (D's weights frozen for this pass)
        self.D.requires_grad_(False)
        fake = self.G(torch.randn(b, self.config.z_dim, device=self.device), y)
        g_loss = generator_hinge_loss(self.D(fake, y))
        self.opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        self.opt_g.step()
        self.D.requires_grad_(True)
        self.ema.update(self.G)
        return {"d_loss": d_loss.item(), "g_loss": g_loss.item(),
                "d_real": logits[:b].mean().item(), "d_fake": logits[b:].mean().item()}

    def end_epoch(self) -> dict[str, float]:
        return {}

    def _calibrated_ema(self, batches: int) -> Generator:
        model = copy.deepcopy(self.ema.model)
        model.recalibrate_batchnorm(batches, generator=torch.Generator().manual_seed(self.seed + 2))
        return model.eval()

    def save_samples(self, path: Path) -> None:
        model = self._calibrated_ema(10)
        with torch.no_grad():
            images = (model(self.grid_z.to(self.device), self.grid_labels.to(self.device)) + 1) / 2
        save_grid(images, 10, path)

    def export_model(self) -> nn.Module:
        return self._calibrated_ema(self.train_config.bn_calibration_batches).cpu()

    def state_dict(self) -> dict[str, Any]:
        return {"G": self.G.state_dict(), "D": self.D.state_dict(), "ema": self.ema.state_dict(),
                "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.G.load_state_dict(state["G"])
        self.D.load_state_dict(state["D"])
        self.ema.load_state_dict(state["ema"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])


class VAETrainer:
    model_type = "vae"
    value_range = (0.0, 1.0)
    curve_keys = ["neg_elbo", "reconstruction", "kl", "eval_neg_elbo"]

    def __init__(self, config: VAEConfig, train: VAETrainConfig, device: torch.device, seed: int,
                 data: ImageDataset, eval_data: ImageDataset | None = None) -> None:
        self.config, self.train_config, self.device, self.seed = config, train, device, seed
        self.vae = VAE(config).to(device)
        self.ema = EMA(self.vae, train.ema_max_decay)
        self.opt = torch.optim.AdamW(self.vae.parameters(), lr=train.lr, weight_decay=train.weight_decay)
        self.eval_data = eval_data
        self.step = 0
        self.grid_labels = _grid_labels(config.num_classes)
        self.grid_z = torch.randn(len(self.grid_labels), config.z_dim, generator=torch.Generator().manual_seed(seed + 1))

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        self.vae.train()
        terms = self.vae.elbo(random_shift(x, self.train_config.max_shift), y)
        warmup = self.train_config.kl_warmup_steps
        beta = min(1.0, (self.step + 1) / warmup) if warmup > 0 else 1.0
        loss = (terms.reconstruction + beta * terms.kl).mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.ema.update(self.vae)
        self.step += 1
        return {"neg_elbo": terms.loss.mean().item(), "reconstruction": terms.reconstruction.mean().item(),
                "kl": terms.kl.mean().item()}

    @torch.no_grad()
    def end_epoch(self) -> dict[str, float]:
        if self.eval_data is None:
            return {}
        noise = torch.Generator().manual_seed(self.seed + 3)
        total = 0.0
        for x, y in zip(self.eval_data.images.split(500), self.eval_data.labels.split(500), strict=True):
            total += self.ema.model.elbo(x.to(self.device), y.to(self.device), generator=noise).loss.sum().item()
        return {"eval_neg_elbo": total / len(self.eval_data)}

    @torch.no_grad()
    def save_samples(self, path: Path) -> None:
        images = self.ema.model.decode(self.grid_z.to(self.device), self.grid_labels.to(self.device))
        save_grid(images, 10, path)

    def export_model(self) -> nn.Module:
        return copy.deepcopy(self.ema.model).cpu().eval()

    def state_dict(self) -> dict[str, Any]:
        return {"vae": self.vae.state_dict(), "ema": self.ema.state_dict(), "opt": self.opt.state_dict(),
                "step": self.step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.vae.load_state_dict(state["vae"])
        self.ema.load_state_dict(state["ema"])
        self.opt.load_state_dict(state["opt"])
        self.step = int(state["step"])


def random_shift(x: torch.Tensor, max_shift: int) -> torch.Tensor:
    """Translate each image by up to ``max_shift`` pixels (zero fill), using the global RNG."""
    if max_shift <= 0:
        return x
    b, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4)
    offsets = torch.randint(0, 2 * max_shift + 1, (b, 2))
    return torch.stack([padded[i, :, dy:dy + h, dx:dx + w] for i, (dy, dx) in enumerate(offsets.tolist())])


class ClassifierTrainer:
    model_type = "classifier"
    value_range = (0.0, 1.0)
    curve_keys = ["loss", "accuracy", "eval_accuracy"]

    def __init__(self, config: ClassifierConfig, train: ClassifierTrainConfig, device: torch.device, seed: int,
                 data: ImageDataset, eval_data: ImageDataset | None = None) -> None:
        self.config, self.train_config, self.device = config, train, device
        self.model = Classifier(config).to(device)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=train.lr, weight_decay=train.weight_decay)
        self.eval_data = eval_data

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        self.model.train()
        logits = self.model(random_shift(x, self.train_config.max_shift))
        loss = F.cross_entropy(logits, y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return {"loss": loss.item(), "accuracy": (logits.argmax(1) == y).float().mean().item()}

    def end_epoch(self) -> dict[str, float]:
        if self.eval_data is None:
            return {}
        predicted = self.model.predict(self.eval_data.images)
        return {"eval_accuracy": (predicted == self.eval_data.labels).float().mean().item()}

    def save_samples(self, path: Path) -> None:
        return None  # nothing to draw for a classifier

    def export_model(self) -> nn.Module:
        return copy.deepcopy(self.model).cpu().eval()

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "opt": self.opt.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["opt"])


class DiffusionTrainer:
    """Denoising score matching with label dropout (classifier-free guidance), Min-SNR weights, EMA."""

    model_type = "diffusion"
    value_range = (-1.0, 1.0)
    curve_keys = ["loss", "eval_loss", "lr"]

    def __init__(self, config: DiffusionConfig, train: DiffusionTrainConfig, device: torch.device, seed: int,
                 data: ImageDataset, eval_data: ImageDataset | None = None) -> None:
        self.config, self.train_config, self.device, self.seed = config, train, device, seed
        self.model = DigitDiffusion(config).to(device)
        self.ema = EMA(self.model, train.ema_max_decay)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=train.lr, weight_decay=train.weight_decay)
        self.alphas_cumprod = self.model.make_scheduler("DDPM").alphas_cumprod.to(device)
        self.eval_data = eval_data
        self.step = 0
        self.grid_labels = _grid_labels(config.num_classes, per_row=8)
        self.grid_noise = torch.randn(len(self.grid_labels), config.channels, config.size, config.size,
                                      generator=torch.Generator().manual_seed(seed + 1))

    def _lr(self) -> float:
        warmup = self.train_config.warmup_steps
        return self.train_config.lr * (min(1.0, (self.step + 1) / warmup) if warmup > 0 else 1.0)

    def _loss(self, model: nn.Module, x0: torch.Tensor, y: torch.Tensor, t: torch.Tensor,
              noise: torch.Tensor) -> torch.Tensor:
        """Per-image weighted MSE of the model's prediction at timesteps t."""
        a = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        target = noise if self.config.prediction_type == "epsilon" else a.sqrt() * noise - (1 - a).sqrt() * x0
        mse = (model(xt, t, y) - target).square().mean(dim=(1, 2, 3))
        if self.train_config.min_snr_gamma > 0:
            mse = mse * min_snr_weight(self.alphas_cumprod, t, self.train_config.min_snr_gamma,
                                       self.config.prediction_type)
        return mse

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        self.model.train()
        b = x.shape[0]
        t = torch.randint(0, self.config.num_train_timesteps, (b,), device=self.device)
        noise = torch.randn_like(x)
        drop = torch.rand(b, device=self.device) < self.train_config.p_uncond
        y = torch.where(drop, torch.full_like(y, self.config.null_class), y)
        loss = self._loss(self.model, x, y, t, noise).mean()
        lr = self._lr()
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.train_config.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.train_config.grad_clip)
        self.opt.step()
        self.ema.update(self.model)
        self.step += 1
        return {"loss": loss.item(), "lr": lr}

    @torch.no_grad()
    def end_epoch(self) -> dict[str, float]:
        """The EMA model's weighted loss on the held-out digits at fixed timesteps and noise."""
        if self.eval_data is None:
            return {}
        noise_rng = torch.Generator().manual_seed(self.seed + 3)
        x0 = self.eval_data.to_range(-1, 1)
        t = torch.randint(0, self.config.num_train_timesteps, (len(x0),), generator=noise_rng)
        noise = torch.randn(x0.shape, generator=noise_rng)
        total = 0.0
        for xs, ys, ts, ns in zip(x0.split(250), self.eval_data.labels.split(250), t.split(250), noise.split(250),
                                  strict=True):
            total += self._loss(self.ema.model, xs.to(self.device), ys.to(self.device), ts.to(self.device),
                                ns.to(self.device)).sum().item()
        return {"eval_loss": total / len(x0)}

    @torch.no_grad()
    def save_samples(self, path: Path) -> None:
        images = self.ema.model.sample(self.grid_labels, self.grid_noise, steps=self.train_config.sample_steps,
                                       guidance=self.train_config.sample_guidance, scheduler=DEFAULT_SCHEDULER)
        save_grid(images, 8, path)

    def export_model(self) -> nn.Module:
        return copy.deepcopy(self.ema.model).cpu().eval()

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "ema": self.ema.state_dict(), "opt": self.opt.state_dict(),
                "step": self.step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.opt.load_state_dict(state["opt"])
        self.step = int(state["step"])


# model type -> (trainer, model config, training config)
TRAINERS: dict[str, tuple[type, type, type]] = {
    "gan": (GANTrainer, GANConfig, GANTrainConfig),
    "vae": (VAETrainer, VAEConfig, VAETrainConfig),
    "classifier": (ClassifierTrainer, ClassifierConfig, ClassifierTrainConfig),
    "diffusion": (DiffusionTrainer, DiffusionConfig, DiffusionTrainConfig),
}
