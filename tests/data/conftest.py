"""Shared helpers of the data tests: tiny image files (decode, files, cache) and a tiny IDX dataset
(sources, split), written by each test in its own folder."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.data.sources import ImageSource, load_idx_dataset

SIZE = 8
# Random float RGB images, as Keras' augmentation layers and `flip_images` take them.
IMAGES = np.random.default_rng(0).uniform(0, 255, (8, 16, 16, 3)).astype("float32")


def save_image(path: Path, value: int, *, mode: str = "RGB", fmt: str | None = None, size: int = 12) -> Path:
    """Writes a flat image of `value` in `mode` (8-bit modes) at `path`; returns the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fill: int | tuple[int, ...] = value if mode in ("L", "P") else (value,) * len(mode)
    Image.new(mode, (size, size), fill).save(path, format=fmt)
    return path


def class_folder(root: Path, counts: dict[str, int], *, suffix: str = ".png") -> Path:
    """Makes root/<class>/<n><suffix>, distinct flat grey levels per file (no duplicates)."""
    level = 10
    for label, count in counts.items():
        for item in range(count):
            save_image(root / label / f"{item}{suffix}", level)
            level += 7
    return root


# A tiny IDX dataset: 6 train and 4 t10k images of 28x28, each different.
TRAIN_LABELS = np.array([3, 0, 9, 1, 0, 3], dtype=np.uint8)
T10K_LABELS = np.array([9, 2, 0, 1], dtype=np.uint8)


def _images(count: int, first_value: int) -> np.ndarray:
    """Returns `count` 28x28 uint8 images, each different from the others and not constant."""
    pixels = np.arange(28 * 28, dtype=np.int64).reshape(28, 28)
    return np.stack([(pixels + first_value + 7 * item) % 256 for item in range(count)]).astype(np.uint8)


TRAIN_IMAGES = _images(len(TRAIN_LABELS), first_value=0)
T10K_IMAGES = _images(len(T10K_LABELS), first_value=100)


def idx_bytes(array: np.ndarray) -> bytes:
    """Encodes a uint8 array as IDX: zero, zero, type 0x08, ndim, big-endian uint32 dims, data."""
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_idx(path: Path, array: np.ndarray) -> Path:
    """Writes `array` as an IDX file, gzipped when `path` ends in .gz."""
    data = idx_bytes(array)
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as handle:
            handle.write(data)
    else:
        path.write_bytes(data)
    return path


def write_dataset(directory: Path, *, train_suffix: str = ".gz", t10k_suffix: str = "") -> Path:
    """Writes the four files of the tiny dataset: train gzipped, t10k plain unless told otherwise."""
    write_idx(directory / f"train-images-idx3-ubyte{train_suffix}", TRAIN_IMAGES)
    write_idx(directory / f"train-labels-idx1-ubyte{train_suffix}", TRAIN_LABELS)
    write_idx(directory / f"t10k-images-idx3-ubyte{t10k_suffix}", T10K_IMAGES)
    write_idx(directory / f"t10k-labels-idx1-ubyte{t10k_suffix}", T10K_LABELS)
    return directory


@pytest.fixture
def source(tmp_path: Path) -> ImageSource:
    """The tiny dataset, loaded."""
    return load_idx_dataset(write_dataset(tmp_path))
