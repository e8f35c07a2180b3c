"""Tests of pipeline/data/datasets.py: a memmap of images streams batch by batch, with the same batches;
flips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.data.datasets import flip_images, image_dataset
from tests.data.conftest import IMAGES


@pytest.mark.parametrize("shuffle", [False, True])
def test_memmap_images_give_the_batches_of_in_memory_images(tmp_path: Path, shuffle: bool) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, size=(7, 5, 5, 3), dtype=np.uint8)
    labels = np.arange(7) % 3
    mapped = np.memmap(tmp_path / "images.u8", mode="w+", dtype=np.uint8, shape=pixels.shape)
    mapped[:] = pixels
    mapped.flush()
    reopened = np.memmap(tmp_path / "images.u8", mode="r", dtype=np.uint8, shape=pixels.shape)

    def batches(images: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        dataset = image_dataset(images, labels, image_size=5, batch_size=3, shuffle=shuffle, seed=4)
        # Two epochs: a reshuffle draws the same permutation for both kinds of input.
        return [(x.numpy(), y.numpy()) for _ in range(2) for x, y in dataset]

    expected, streamed = batches(pixels), batches(reopened)

    assert [len(y) for _, y in streamed] == [3, 3, 1, 3, 3, 1]
    for (want_x, want_y), (got_x, got_y) in zip(expected, streamed, strict=True):
        np.testing.assert_array_equal(got_x, want_x)
        np.testing.assert_array_equal(got_y, want_y)


def test_image_dataset_flips_every_image_when_asked() -> None:
    images = IMAGES.astype("uint8")
    labels = np.arange(len(images))
    plain, flipped = (
        next(iter(image_dataset(images, labels, image_size=16, batch_size=8, flip=flip)))[0].numpy()
        for flip in ("none", "horizontal")
    )
    np.testing.assert_array_equal(flipped, plain[:, :, ::-1, :])


def test_flip_images_refuses_an_unknown_mode() -> None:
    with pytest.raises(ValueError, match="unknown flip 'diagonal'; allowed: horizontal, vertical"):
        flip_images(IMAGES, "diagonal")
