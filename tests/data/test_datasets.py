"""Tests of pipeline/data/datasets.py: a memmap of images streams batch by batch, with the same batches;
each epoch's order depends on the seed and the epoch alone; flips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.data.datasets import EpochOrder, array_dataset, flip_images, image_dataset
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
        # Two epochs: each draws its own permutation, the same for both kinds of input.
        positions = EpochOrder(7, 3, seed=4).batches(first_epoch=0, end_epoch=2) if shuffle else None
        dataset = image_dataset(images, labels, image_size=5, batch_size=3, positions=positions)
        return [(x.numpy(), y.numpy()) for x, y in dataset]

    expected, streamed = batches(pixels), batches(reopened)

    assert [len(y) for _, y in streamed] == ([3, 3, 1, 3, 3, 1] if shuffle else [3, 3, 1])
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


def test_an_epoch_order_depends_on_the_seed_and_the_epoch_alone() -> None:
    order = EpochOrder(10, 4, seed=7)
    epochs = [order.permutation(epoch) for epoch in range(3)]

    for permutation in epochs:
        assert sorted(permutation.tolist()) == list(range(10))
    assert not np.array_equal(epochs[0], epochs[1])
    # Epoch 2 of a stream from epoch 0 is epoch 2 of a stream started there (a resumed run).
    stream = [positions.numpy() for positions, _ in order.batches(first_epoch=0, end_epoch=3)]
    resumed = [positions.numpy() for positions, _ in order.batches(first_epoch=2, end_epoch=3)]
    assert [len(batch) for batch in stream] == [4, 4, 2] * 3
    np.testing.assert_array_equal(np.concatenate(stream[6:]), np.concatenate(resumed))
    np.testing.assert_array_equal(np.concatenate(resumed), epochs[2])
    # A mid-epoch resume skips the batches already trained and goes on with the same ones.
    skipped = [positions.numpy() for positions, _ in order.batches(first_epoch=1, end_epoch=3, skip_batches=2)]
    np.testing.assert_array_equal(np.concatenate(skipped), np.concatenate(stream[5:]))
    assert not np.array_equal(EpochOrder(10, 4, seed=8).permutation(0), epochs[0])


def test_each_example_is_drawn_from_one_of_its_views_the_same_way_in_every_run() -> None:
    labels = np.arange(6)
    views = [np.arange(6, dtype=np.float32)[:, None], -np.arange(6, dtype=np.float32)[:, None]]
    order = EpochOrder(6, 6, seed=1, views=2)

    def epoch(first: int) -> np.ndarray:
        rows, batch_labels = next(
            iter(array_dataset(views, labels, batch_size=6, positions=order.batches(first_epoch=first)))
        )
        # Each row is its own example's, from one of its two views.
        np.testing.assert_array_equal(np.abs(rows.numpy()[:, 0]), batch_labels.numpy())
        return rows.numpy()[:, 0]

    first, again, later = epoch(0), epoch(0), epoch(5)
    np.testing.assert_array_equal(first, again)
    assert (first < 0).any() and (first > 0).any()
    assert not np.array_equal(np.sign(first), np.sign(later))
