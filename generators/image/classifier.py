"""A small CNN classifier used to evaluate generators.

Trained on the train split only; its accuracy on generated images measures whether a
conditional generator draws the requested class, and its penultimate activations are the
feature space of the Fréchet distance in ``evaluate``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class ClassifierConfig:
    size: int = 32
    channels: int = 1
    num_classes: int = 10
    width: int = 32         # channels of the first conv stage, x2 per stage (3 stages)
    feature_dim: int = 128  # penultimate layer: the Fréchet-distance feature space
    dropout: float = 0.3

    def __post_init__(self) -> None:
        assert self.size in (32, 64), "size must be 32 or 64"
        assert self.channels in (1, 3) and self.num_classes >= 2


class ConvStage(nn.Module):
    """conv3x3 -> BN -> ReLU -> 2x2 max-pool: (B, Cin, H, W) -> (B, Cout, H/2, W/2)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.norm = nn.BatchNorm2d(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(F.relu(self.norm(self.conv(x))), 2)


class Classifier(nn.Module):
    def __init__(self, config: ClassifierConfig) -> None:
        super().__init__()
        self.config = config
        w = config.width
        self.stages = nn.Sequential(ConvStage(config.channels, w), ConvStage(w, 2 * w), ConvStage(2 * w, 4 * w))
        flat = 4 * w * (config.size // 8) ** 2
        self.fc = nn.Linear(flat, config.feature_dim)
        self.head = nn.Linear(config.feature_dim, config.num_classes)
        self.dropout = nn.Dropout(config.dropout)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, C, S, S) in [0, 1] -> (B, feature_dim) penultimate ReLU activations
        assert x.shape[1:] == (self.config.channels, self.config.size, self.config.size)
        h = self.stages(2 * x - 1).flatten(1)  # (B, 4w * (S/8)^2)
        return F.relu(self.fc(self.dropout(h)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(x)))  # (B, num_classes) logits

    @torch.no_grad()
    def predict(self, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
        """Class ids (B,), evaluated in eval mode in batches."""
        return self.logits_and_features(x, batch_size)[0].argmax(1)

    @torch.no_grad()
    def logits_and_features(self, x: torch.Tensor, batch_size: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        logits, feats = [], []
        for batch in x.split(batch_size):
            f = self.features(batch.to(device))
            feats.append(f.cpu())
            logits.append(self.head(f).cpu())
        self.train(was_training)
        return torch.cat(logits), torch.cat(feats)
