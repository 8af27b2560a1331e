"""Class-conditional convolutional VAE with a Bernoulli likelihood on [0, 1] intensities.

q(z | x, y) = N(mu, diag sigma^2) from a conv encoder that also sees the class;
p(x | z, y) = prod_i Bernoulli(x_i; sigmoid(logit_i)) from a transposed-conv decoder;
p(z) = N(0, I). Pixel intensities are NOT binarized: the "Bernoulli" term is the binary
cross-entropy against grey levels, the usual practice, and it is not a normalised density
over [0, 1] (its minimum is the intensities' own entropy, not 0). Bounds are in nats per image.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import pairwise

import torch
import torch.nn as nn
import torch.nn.functional as F

from .gan import embed_labels


@dataclass
class VAEConfig:
    size: int = 32          # image side in pixels: 32 or 64
    channels: int = 1
    num_classes: int = 10
    z_dim: int = 32
    width: int = 16         # conv channels at the first (full-resolution) stage, x2 per halving
    hidden: int = 256       # fully connected layer between the conv stack and z
    class_dim: int = 16     # class embedding size fed to encoder and decoder
    res_blocks: int = 0     # residual blocks after each resolution change, encoder and decoder

    def __post_init__(self) -> None:
        assert self.size in (32, 64), "size must be 32 or 64"
        assert self.channels in (1, 3) and self.num_classes >= 1

    @property
    def num_downsamples(self) -> int:
        return int(math.log2(self.size // 4))  # size -> 4x4


@dataclass
class ELBO:
    """Per-image terms, each (B,), in nats."""

    reconstruction: torch.Tensor  # -log p(x | z, y) at one posterior sample
    kl: torch.Tensor              # KL(q(z | x, y) || p(z)), analytic

    @property
    def loss(self) -> torch.Tensor:  # -ELBO
        return self.reconstruction + self.kl


class ResBlock(nn.Module):
    """x + conv3x3(SiLU(conv3x3(SiLU(x)))), shape preserving."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.silu(self.conv1(F.silu(x))))


def _res_stack(channels: int, n: int) -> nn.Module:
    return nn.Sequential(*(ResBlock(channels) for _ in range(n)))  # identity when n == 0


class Encoder(nn.Module):
    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        n = config.num_downsamples
        widths = [config.width * 2 ** i for i in range(n + 1)]  # e.g. [32, 64, 128, 256]
        self.stem = nn.Conv2d(config.channels, widths[0], 3, padding=1)
        self.downs = nn.ModuleList(nn.Conv2d(a, b, 4, stride=2, padding=1) for a, b in pairwise(widths))
        self.res = nn.ModuleList(_res_stack(b, config.res_blocks) for b in widths[1:])
        self.fc = nn.Linear(widths[-1] * 16 + config.class_dim, config.hidden)
        self.head = nn.Linear(config.hidden, 2 * config.z_dim)

    def forward(self, x: torch.Tensor, y_emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # x: (B, C, S, S) in [0, 1], y_emb: (B, class_dim) -> mu, logvar: (B, z_dim) each
        h = self.stem(2 * x - 1)
        for down, res in zip(self.downs, self.res, strict=True):
            h = res(down(F.silu(h)))  # halves H, W, ends at 4x4
        h = F.silu(self.fc(torch.cat([F.silu(h).flatten(1), y_emb], dim=1)))  # (B, hidden)
        mu, logvar = self.head(h).chunk(2, dim=1)
        return mu, logvar.clamp(-12.0, 8.0)


class Decoder(nn.Module):
    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        n = config.num_downsamples
        widths = [config.width * 2 ** (n - i) for i in range(n + 1)]  # e.g. [256, 128, 64, 32]
        self.base = widths[0]
        self.fc = nn.Linear(config.z_dim + config.class_dim, config.hidden)
        self.fc2 = nn.Linear(config.hidden, widths[0] * 16)
        self.ups = nn.ModuleList(nn.ConvTranspose2d(a, b, 4, stride=2, padding=1) for a, b in pairwise(widths))
        self.res = nn.ModuleList(_res_stack(b, config.res_blocks) for b in widths[1:])
        self.out = nn.Conv2d(widths[-1], config.channels, 3, padding=1)

    def forward(self, z: torch.Tensor, y_emb: torch.Tensor) -> torch.Tensor:
        # z: (B, z_dim), y_emb: (B, class_dim) -> logits (B, C, S, S)
        h = F.silu(self.fc(torch.cat([z, y_emb], dim=1)))
        h = self.fc2(h).view(-1, self.base, 4, 4)  # (B, base, 4, 4)
        for up, res in zip(self.ups, self.res, strict=True):
            h = res(up(F.silu(h)))  # doubles H, W
        return self.out(F.silu(h))


def gaussian_log_prob(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; mu, diag exp(logvar)), summed over the last dim."""
    return -0.5 * (((z - mu) ** 2) * torch.exp(-logvar) + logvar + math.log(2 * math.pi)).sum(-1)


def bernoulli_log_prob(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """sum_i x_i log p_i + (1 - x_i) log(1 - p_i) over all pixels: (B, C, S, S) -> (B,)."""
    return -F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1)


class VAE(nn.Module):
    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        self.config = config
        self.class_embed = nn.Embedding(config.num_classes, config.class_dim)
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    def encode(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior parameters (mu, logvar), each (B, z_dim)."""
        assert x.shape[1:] == (self.config.channels, self.config.size, self.config.size)
        return self.encoder(x, embed_labels(self.class_embed, y))

    def decode_logits(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.decoder(z, embed_labels(self.class_embed, y))

    def decode(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Bernoulli means in [0, 1], (B, C, S, S)."""
        return torch.sigmoid(self.decode_logits(z, y))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> ELBO:
        return self.elbo(x, y)

    def elbo(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None = None) -> ELBO:
        """One-sample reparameterized ELBO terms per image (nats)."""
        mu, logvar = self.encode(x, y)
        eps = torch.randn(mu.shape, generator=generator).to(mu.device)
        z = mu + torch.exp(0.5 * logvar) * eps  # reparameterization: gradients flow to mu, logvar
        reconstruction = -bernoulli_log_prob(self.decode_logits(z, y), x)
        kl = 0.5 * (mu ** 2 + logvar.exp() - 1.0 - logvar).sum(1)
        return ELBO(reconstruction, kl)

    @torch.no_grad()
    def iwae_bound(self, x: torch.Tensor, y: torch.Tensor, k: int = 100,
                   generator: torch.Generator | None = None, chunk: int = 25) -> torch.Tensor:
        """log (1/k) sum_i p(x, z_i | y) / q(z_i | x, y), z_i ~ q: a lower bound on log p(x | y).

        Returns (B,) in nats; tightens towards log p(x | y) as k grows (k=1 is the ELBO).
        """
        mu, logvar = self.encode(x, y)
        log_w = []
        for start in range(0, k, chunk):
            m = min(chunk, k - start)
            eps = torch.randn((m, *mu.shape), generator=generator).to(mu.device)  # (m, B, z)
            z = mu + torch.exp(0.5 * logvar) * eps
            logits = self.decode_logits(z.flatten(0, 1), y.repeat(m))  # (m*B, C, S, S)
            log_px = bernoulli_log_prob(logits, x.repeat(m, 1, 1, 1)).view(m, -1)  # (m, B)
            log_pz = gaussian_log_prob(z, torch.zeros_like(z), torch.zeros_like(z))
            log_qz = gaussian_log_prob(z, mu, logvar)
            log_w.append(log_px + log_pz - log_qz)
        return torch.logsumexp(torch.cat(log_w), dim=0) - math.log(k)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Decode the posterior mean: (B, C, S, S) in [0, 1]."""
        mu, _ = self.encode(x, y)
        return self.decode(mu, y)

    @torch.no_grad()
    def sample(self, labels: torch.Tensor, temperature: float = 1.0,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Prior samples decoded to Bernoulli means in [0, 1], one per label: (B, C, S, S)."""
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        device = self._device()
        z = temperature * torch.randn(len(labels), self.config.z_dim, generator=generator)
        return self.decode(z.to(device), labels.to(device))
