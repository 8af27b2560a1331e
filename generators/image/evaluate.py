"""Evaluate the image models on the held-out MNIST digits and print a table.

    python -m generators.image.evaluate --gan DIR --vae DIR --diffusion DIR --classifier DIR [--n 1000] [--seed 0] [--markdown]

- classifier: accuracy on the 1,000 held-out real digits;
- GAN / VAE: accuracy of generated digits for the requested class (equal numbers per class),
  as judged by that classifier, and the Fréchet distance between held-out real digits and
  generated ones in the classifier's penultimate feature space ("FD"); the real-vs-real
  floor compares a class-balanced subset of the train split with the held-out split;
- diffusion: the same two metrics for each guidance scale asked for (``--guidance``), sampled with
  ``--steps`` steps of ``--scheduler``;
- VAE: -ELBO and the IWAE bound (k importance samples) on the held-out digits, in nats per image.
"""
from __future__ import annotations

import argparse
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint import LoadedModel, load_model
from .classifier import Classifier
from .data import load_mnist5k

log = logging.getLogger(__name__)


@dataclass
class Row:
    model: str
    metric: str
    value: float
    target: str = ""

    def formatted(self) -> str:
        return f"{self.value:.4f}" if abs(self.value) < 10 else f"{self.value:.2f}"


# ---------------------------------------------------------------------------- metrics

def _sqrtm_psd(matrix: torch.Tensor) -> torch.Tensor:
    """Square root of a symmetric positive semi-definite matrix via eigendecomposition."""
    values, vectors = torch.linalg.eigh(matrix)
    return (vectors * values.clamp(min=0).sqrt()) @ vectors.T


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2) between two feature sets (N, D).

    The symmetric form has the same trace as (S_a S_b)^1/2 and is computed in float64 with eigh.
    """
    a, b = a.double(), b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)
    root_a = _sqrtm_psd(cov_a)
    middle = root_a @ cov_b @ root_a
    middle = (middle + middle.T) / 2  # symmetric up to rounding
    trace_sqrt = torch.linalg.eigvalsh(middle).clamp(min=0).sqrt().sum()
    value = (mu_a - mu_b).square().sum() + cov_a.trace() + cov_b.trace() - 2 * trace_sqrt
    return float(value.clamp(min=0))


def balanced_labels(n: int, num_classes: int) -> torch.Tensor:
    """n labels with equal counts per class (n must be a multiple of num_classes)."""
    if n % num_classes:
        raise ValueError(f"--n must be a multiple of the {num_classes} classes, got {n}")
    return torch.arange(num_classes).repeat_interleave(n // num_classes)


def accuracy_and_features(classifier: Classifier, images: torch.Tensor,
                          labels: torch.Tensor) -> tuple[float, torch.Tensor]:
    logits, features = classifier.logits_and_features(images)
    return (logits.argmax(1) == labels).float().mean().item(), features


@torch.no_grad()
def generate(loaded: LoadedModel, labels: torch.Tensor, seed: int, truncation: float | None = None,
             temperature: float = 1.0, batch_size: int = 500, guidance: float = 2.0, steps: int = 25,
             scheduler: str = "DPM++ 2M") -> torch.Tensor:
    """Images in [0, 1] for ``labels`` from a GAN, a VAE or a diffusion model, deterministic for a seed."""
    noise = torch.Generator().manual_seed(seed)
    out = []
    for batch in labels.split(batch_size):
        if loaded.model_type == "diffusion":
            config = loaded.model.config
            start = torch.randn(len(batch), config.channels, config.size, config.size, generator=noise)
            out.append(loaded.model.sample(batch, start, steps=steps, guidance=guidance, scheduler=scheduler,
                                           step_generators=[noise] * len(batch)).cpu())
        elif loaded.model_type == "gan":
            out.append(loaded.model.sample(batch, truncation=truncation, generator=noise).cpu())
        else:
            out.append(loaded.model.sample(batch, temperature=temperature, generator=noise).cpu())
    return torch.cat(out)


@torch.no_grad()
def vae_bounds(loaded: LoadedModel, images: torch.Tensor, labels: torch.Tensor, seed: int,
               k: int = 100, batch_size: int = 100) -> tuple[float, float]:
    """Mean -ELBO (one sample per image) and mean -IWAE_k over a set, in nats per image."""
    vae = loaded.model
    noise = torch.Generator().manual_seed(seed)
    neg_elbo = neg_iwae = 0.0
    for x, y in zip(images.split(batch_size), labels.split(batch_size), strict=True):
        neg_elbo += vae.elbo(x, y, generator=noise).loss.sum().item()
        neg_iwae -= vae.iwae_bound(x, y, k=k, generator=noise).sum().item()
    return neg_elbo / len(images), neg_iwae / len(images)


# ---------------------------------------------------------------------------- the table

def evaluate(gan_dir: Path | None, vae_dir: Path | None, classifier_dir: Path, n: int = 1000, seed: int = 0,
             truncations: list[float | None] | None = None, iwae_k: int = 100, diffusion_dir: Path | None = None,
             guidances: list[float] | None = None, steps: int = 25, scheduler: str = "DPM++ 2M") -> list[Row]:
    """All metrics as rows; GAN/VAE/diffusion rows only for the folders given."""
    loaded_classifier = load_model(classifier_dir)
    if loaded_classifier.model_type != "classifier":
        raise ValueError(f"{classifier_dir} holds a {loaded_classifier.model_type}, not a classifier")
    classifier: Classifier = loaded_classifier.model
    size = classifier.config.size
    held_out, train = load_mnist5k(size, "eval"), load_mnist5k(size, "train")
    rows = []

    accuracy, real_features = accuracy_and_features(classifier, held_out.images, held_out.labels)
    rows.append(Row("classifier", "accuracy, held-out real digits", accuracy))
    # real-vs-real floor: a class-balanced random train subset of n images vs the held-out split
    pick = torch.Generator().manual_seed(seed)
    per_class = n // train.num_classes
    subset = torch.cat([idx[torch.randperm(len(idx), generator=pick)[:per_class]]
                        for idx in (torch.nonzero(train.labels == c).squeeze(1) for c in range(train.num_classes))])
    _, train_features = accuracy_and_features(classifier, train.images[subset], train.labels[subset])
    rows.append(Row("real", f"FD train subset ({len(subset)}) vs held-out (floor)",
                    frechet_distance(train_features, real_features)))

    labels = balanced_labels(n, held_out.num_classes)
    if gan_dir is not None:
        gan = load_model(gan_dir)
        _check_generator(gan, "gan", size)
        for truncation in truncations or [None]:
            name = "GAN" if truncation is None else f"GAN (truncation {truncation:g})"
            accuracy, features = accuracy_and_features(classifier, generate(gan, labels, seed, truncation), labels)
            targets = (">= 0.97", "<= 30") if truncation is None else ("", "")
            rows.append(Row(name, "accuracy of requested class", accuracy, targets[0]))
            rows.append(Row(name, "FD vs held-out", frechet_distance(features, real_features), targets[1]))
    if diffusion_dir is not None:
        diffusion = load_model(diffusion_dir)
        _check_generator(diffusion, "diffusion", size)
        diffusion.model.use_channels_last()  # the plugin's CPU path: these figures are of the images the app makes
        for guidance in guidances or [2.0]:
            name = f"Diffusion (guidance {guidance:g}, {steps} {scheduler} steps)"
            images = generate(diffusion, labels, seed, batch_size=250, guidance=guidance, steps=steps, scheduler=scheduler)
            accuracy, features = accuracy_and_features(classifier, images, labels)
            rows.append(Row(name, "accuracy of requested class", accuracy, ">= 0.98"))
            rows.append(Row(name, "FD vs held-out", frechet_distance(features, real_features), "< GAN's"))
            log.info("%s: accuracy %.4f, FD %.2f", name, rows[-2].value, rows[-1].value)
    if vae_dir is not None:
        vae = load_model(vae_dir)
        _check_generator(vae, "vae", size)
        accuracy, features = accuracy_and_features(classifier, generate(vae, labels, seed), labels)
        rows.append(Row("VAE", "accuracy of requested class (prior samples)", accuracy))
        rows.append(Row("VAE", "FD vs held-out (prior samples, Bernoulli means)", frechet_distance(features, real_features)))
        neg_elbo, neg_iwae = vae_bounds(vae, held_out.images, held_out.labels, seed, iwae_k)
        rows.append(Row("VAE", "-ELBO, held-out, nats/image", neg_elbo, "<= 100"))
        rows.append(Row("VAE", f"-IWAE (k={iwae_k}), held-out, nats/image", neg_iwae, "<= 95"))
    return rows


def _check_generator(loaded: LoadedModel, model_type: str, size: int) -> None:
    if loaded.model_type != model_type:
        raise ValueError(f"expected a {model_type} model, got {loaded.model_type}")
    config = loaded.model.config
    if config.size != size or config.num_classes != 10 or config.channels != 1:
        raise ValueError(f"the {model_type} must be a 10-class grayscale {size} px model (the classifier's); "
                         f"got {config.num_classes} classes, {config.channels} channel(s), {config.size} px")


def format_table(rows: list[Row], markdown: bool = False) -> str:
    header = ("model", "metric", "value", "target")
    cells = [(r.model, r.metric, r.formatted(), r.target) for r in rows]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|---|---|---:|---|"]
        lines += ["| " + " | ".join(c) + " |" for c in cells]
        return "\n".join(lines)
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(header)]
    fmt = "  ".join(f"{{:{'>' if i == 2 else '<'}{w}}}" for i, w in enumerate(widths))
    lines = [fmt.format(*header), fmt.format(*("-" * w for w in widths))]
    return "\n".join(lines + [fmt.format(*c) for c in cells])


def _parse_truncation(text: str) -> float | None:
    if text.lower() == "none":
        return None
    value = float(text)
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"truncation must be > 0 or 'none', got {text}")
    return value


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="python -m generators.image.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("--gan", type=Path, help="exported GAN folder")
    parser.add_argument("--vae", type=Path, help="exported VAE folder")
    parser.add_argument("--diffusion", type=Path, help="exported diffusion model folder")
    parser.add_argument("--guidance", type=float, nargs="+", default=[2.0], help="diffusion guidance scale(s)")
    parser.add_argument("--steps", type=int, default=25, help="diffusion sampling steps")
    parser.add_argument("--scheduler", default="DPM++ 2M", help="diffusion scheduler (DPM++ 2M, DDIM, Euler, …)")
    parser.add_argument("--classifier", type=Path, required=True, help="exported classifier folder")
    parser.add_argument("--n", type=int, default=1000, help="generated images per model (multiple of 10)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--truncation", type=_parse_truncation, nargs="+", default=[None],
                        help="GAN truncation value(s); 'none' for plain normal noise")
    parser.add_argument("--iwae-k", type=int, default=100)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table (for the model card)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        rows = evaluate(args.gan, args.vae, args.classifier, args.n, args.seed, args.truncation, args.iwae_k,
                        args.diffusion, args.guidance, args.steps, args.scheduler)
    except (ValueError, FileNotFoundError) as error:
        log.error("%s", error)
        raise SystemExit(2) from error
    print(format_table(rows, args.markdown))


if __name__ == "__main__":
    main()
