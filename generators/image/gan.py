"""Class-conditional DCGAN with a projection discriminator (Miyato & Koyama, 2018).

Generator: z (truncated-normal optional) -> linear -> 4x4 map -> transposed-conv blocks with
class-conditional BatchNorm -> tanh image in [-1, 1].
Discriminator: spectrally normalised convs -> global sum pool -> linear(h) + <embed(y), h>.
Trained with the hinge loss; an EMA copy of the generator is the model that gets exported.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from itertools import pairwise

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import spectral_norm


@dataclass
class GANConfig:
    size: int = 32          # output side in pixels: 32 or 64
    channels: int = 1       # 1 grayscale, 3 RGB
    num_classes: int = 10
    z_dim: int = 128
    g_width: int = 16       # generator channels at full resolution (x2 per halving, 4x4 has most)
    d_width: int = 16       # discriminator channels at full resolution (x2 per halving)
    mbstd_group: int = 4    # minibatch-std group size in D (0 or 1: off)

    def __post_init__(self) -> None:
        assert self.size in (32, 64), "size must be 32 or 64"
        assert self.channels in (1, 3) and self.num_classes >= 1

    @property
    def num_upsamples(self) -> int:
        return int(math.log2(self.size // 4))  # 4x4 -> size: 3 for 32 px, 4 for 64 px


def sample_latent(n: int, z_dim: int, truncation: float | None = None,
                  generator: torch.Generator | None = None, device: str | torch.device = "cpu") -> torch.Tensor:
    """(n, z_dim) standard normal; with ``truncation`` t, entries with |z| > t are redrawn."""
    if truncation is not None and truncation <= 0:
        raise ValueError(f"truncation must be > 0, got {truncation}")
    z = torch.randn(n, z_dim, generator=generator)
    if truncation is not None:
        outside = z.abs() > truncation
        while outside.any():  # redraw only the offending entries
            z[outside] = torch.randn(int(outside.sum()), generator=generator)
            outside = z.abs() > truncation
    return z.to(device)


# ---------------------------------------------------------------------------- generator

def embed_labels(embedding: nn.Embedding, y: torch.Tensor) -> torch.Tensor:
    """Look up class ids (B,) or mix rows by class weights (B, num_classes) for in-between classes."""
    return y.to(embedding.weight.dtype) @ embedding.weight if y.is_floating_point() else embedding(y)


class ConditionalBatchNorm2d(nn.Module):
    """BatchNorm without its own affine; per-class gain and bias come from embeddings."""

    def __init__(self, num_features: int, num_classes: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(num_features, affine=False)
        self.gain = nn.Embedding(num_classes, num_features)
        self.bias = nn.Embedding(num_classes, num_features)
        nn.init.ones_(self.gain.weight)
        nn.init.zeros_(self.bias.weight)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # x: (B, C, H, W), y: (B,) class ids or (B, num_classes) class weights -> (B, C, H, W)
        gain, bias = embed_labels(self.gain, y), embed_labels(self.bias, y)
        return self.bn(x) * gain[:, :, None, None] + bias[:, :, None, None]


class UpBlock(nn.Module):
    """CBN -> ReLU -> 4x4 stride-2 transposed conv: (B, Cin, H, W) -> (B, Cout, 2H, 2W)."""

    def __init__(self, c_in: int, c_out: int, num_classes: int) -> None:
        super().__init__()
        self.norm = ConditionalBatchNorm2d(c_in, num_classes)
        self.up = nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1, bias=False)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.up(F.relu(self.norm(x, y)))


class Generator(nn.Module):
    def __init__(self, config: GANConfig) -> None:
        super().__init__()
        self.config = config
        n = config.num_upsamples
        widths = [config.g_width * 2 ** (n - i) for i in range(n + 1)]  # e.g. [256, 128, 64, 32]
        self.base = widths[0]
        self.fc = nn.Linear(config.z_dim, 4 * 4 * widths[0])
        self.blocks = nn.ModuleList(UpBlock(a, b, config.num_classes) for a, b in pairwise(widths))
        self.out_norm = ConditionalBatchNorm2d(widths[-1], config.num_classes)
        self.out = nn.Conv2d(widths[-1], config.channels, 3, padding=1)

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # z: (B, z_dim), y: (B,) class ids -> (B, channels, size, size) in [-1, 1]
        assert z.shape[1] == self.config.z_dim and y.shape[0] == z.shape[0]
        h = self.fc(z).view(-1, self.base, 4, 4)  # (B, base, 4, 4)
        for block in self.blocks:
            h = block(h, y)  # doubles H, W each time
        return torch.tanh(self.out(F.relu(self.out_norm(h, y))))

    @torch.no_grad()
    def sample(self, labels: torch.Tensor, truncation: float | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Images in [0, 1], one per label, shape (B, channels, size, size)."""
        device = next(self.parameters()).device
        z = sample_latent(len(labels), self.config.z_dim, truncation, generator, device)
        return (self(z, labels.to(device)) + 1) / 2

    @torch.no_grad()
    def init_output_bias(self, mean_level: torch.Tensor) -> None:
        """Start the generator at the data's mean intensity per channel (values in [-1, 1]).

        MNIST is ~80% black: a generator that starts mid-grey lets the discriminator learn
        "darker is real" first; the generator then overshoots into saturated all-black images
        where tanh has no gradient left, and collapses. Starting near the data's mean avoids it.
        """
        self.out.bias.copy_(torch.atanh(mean_level.clamp(-0.9, 0.9)))

    @torch.no_grad()
    def recalibrate_batchnorm(self, num_batches: int = 20, batch_size: int = 100,
                              generator: torch.Generator | None = None) -> None:
        """Recompute BatchNorm running statistics for the current weights ("standing stats").

        The EMA generator never trains itself, so the statistics copied from the live generator
        do not match its weights; this averages batch statistics over fresh class-balanced samples.
        """
        device = next(self.parameters()).device
        norms = [m for m in self.modules() if isinstance(m, nn.BatchNorm2d)]
        saved = [m.momentum for m in norms]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative moving average over the batches below
        was_training = self.training
        self.train()
        for _ in range(num_batches):
            y = torch.arange(batch_size) % self.config.num_classes
            self(sample_latent(batch_size, self.config.z_dim, None, generator, device), y.to(device))
        for m, momentum in zip(norms, saved, strict=True):
            m.momentum = momentum
        self.train(was_training)


# ---------------------------------------------------------------------------- discriminator

class DownBlock(nn.Module):
    """SN 4x4 stride-2 conv -> LReLU: (B, Cin, H, W) -> (B, Cout, H/2, W/2)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.down = spectral_norm(nn.Conv2d(c_in, c_out, 4, stride=2, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(self.down(x), 0.1)


def minibatch_std(h: torch.Tensor, group: int) -> torch.Tensor:
    """Feature std within each group of ``group`` consecutive samples: (B, C, H, W) -> (B, 1).

    It lets D see the batch's diversity, so a generator collapsing to one image is easy to spot
    (Karras et al., 2018). Groups are consecutive samples, so a batch of reals followed by fakes
    never mixes the two when both halves are multiples of the group size.
    """
    b = h.shape[0]
    group = max(g for g in range(1, min(group, b) + 1) if b % g == 0)
    grouped = h.reshape(b // group, group, -1)  # (B/g, g, C*H*W)
    std = (grouped.var(dim=1, unbiased=False) + 1e-8).sqrt().mean(dim=1)  # (B/g,)
    return std.repeat_interleave(group).unsqueeze(1)  # (B, 1)


class Discriminator(nn.Module):
    def __init__(self, config: GANConfig) -> None:
        super().__init__()
        self.config = config
        n = config.num_upsamples
        widths = [config.d_width * 2 ** i for i in range(n + 1)]  # e.g. [32, 64, 128, 256]
        self.stem = spectral_norm(nn.Conv2d(config.channels, widths[0], 3, padding=1))
        self.blocks = nn.ModuleList(DownBlock(a, b) for a, b in pairwise(widths))
        extra = 1 if config.mbstd_group > 1 else 0
        self.linear = spectral_norm(nn.Linear(widths[-1] + extra, 1))
        self.embed = spectral_norm(nn.Embedding(config.num_classes, widths[-1]))  # projection

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # x: (B, channels, size, size) in [-1, 1], y: (B,) -> logits (B,)
        h = F.leaky_relu(self.stem(x), 0.1)
        for block in self.blocks:
            h = block(h)  # halves H, W each time, ends at (B, C, 4, 4)
        pooled = h.sum(dim=(2, 3))  # (B, C) global sum pool
        features = pooled
        if self.config.mbstd_group > 1:
            features = torch.cat([pooled, minibatch_std(h, self.config.mbstd_group)], dim=1)  # (B, C + 1)
        return self.linear(features).squeeze(1) + (self.embed(y) * pooled).sum(dim=1)


# ---------------------------------------------------------------------------- losses and EMA

def discriminator_hinge_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()


def generator_hinge_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    return -fake_logits.mean()


def ema_decay(step: int, max_decay: float = 0.999) -> float:
    """Warm-up decay: small early so the EMA forgets the random init, then max_decay."""
    return min(max_decay, (1 + step) / (10 + step))


class EMA:
    """An exponential moving average of a module's parameters (buffers are copied)."""

    def __init__(self, model: nn.Module, max_decay: float = 0.999) -> None:
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.max_decay = max_decay
        self.step = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        decay = ema_decay(self.step, self.max_decay)
        for ema_p, p in zip(self.model.parameters(), model.parameters(), strict=True):
            ema_p.lerp_(p.detach(), 1.0 - decay)
        for ema_b, b in zip(self.model.buffers(), model.buffers(), strict=True):
            ema_b.copy_(b)
        self.step += 1

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.step = int(state["step"])
