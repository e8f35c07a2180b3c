"""From arrays of images to tf.data pipelines the backbone can eat.

Why: Fashion-MNIST is 28x28 grey, ImageNet backbones want RGB at their own size and scaling. The
small uint8 originals are cached (a few MB) and resized per batch, rather than caching the resized
float images (about 110 KB each at 96 px), so memory stays flat while the work per epoch stays small.
"""

from __future__ import annotations

import math
import mmap
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import keras
    import tensorflow as tf


def to_model_input(images: tf.Tensor, *, image_size: int) -> tf.Tensor:
    """Turns a batch of uint8 images into float RGB at `image_size`, still on the 0..255 scale.

    Args:
        images: Tensor (batch, height, width) or (batch, height, width, channels), uint8.
        image_size: Output height and width.

    Returns:
        float32 tensor (batch, image_size, image_size, 3).
    """
    import tensorflow as tf

    images = tf.cast(images, tf.float32)
    if images.shape.rank == 3:
        images = images[..., tf.newaxis]
    if images.shape[-1] == 1:
        images = tf.image.grayscale_to_rgb(images)
    return tf.image.resize(images, (image_size, image_size), method="bilinear")


def flip_images(images: tf.Tensor, mode: str) -> tf.Tensor:
    """Flips a batch of channels-last images the way RandomFlip does when it flips.

    Why: this is the second orientation the frozen-feature cache holds for a flip-only augmentation
    (see `pipeline.data.augmentation`), so it must be exactly what RandomFlip outputs when it flips; in
    `horizontal_and_vertical` mode RandomFlip flips both axes together with one draw (a half turn).

    Args:
        images: Batch (batch, height, width, channels).
        mode: "horizontal", "vertical" or "horizontal_and_vertical".

    Returns:
        The flipped batch.

    Raises:
        ValueError: An unknown mode.
    """
    import keras

    axes = {"horizontal": (-2,), "vertical": (-3,), "horizontal_and_vertical": (-2, -3)}
    if mode not in axes:
        raise ValueError(f"unknown flip {mode!r}; allowed: {', '.join(axes)}")
    for axis in axes[mode]:
        images = keras.ops.flip(images, axis=axis)
    return images


@dataclass(frozen=True)
class EpochOrder:
    """Which examples each training batch holds, epoch after epoch, drawn from the seed and the epoch alone.

    Why not `Dataset.shuffle(seed, reshuffle_each_iteration=True)`: its permutation for an epoch depends on how
    many times the dataset was iterated before in this process, so a training run resumed at epoch k (after a
    crash) would draw epoch 0's order again. Here epoch e's permutation is a stateless function of
    (seed, e): a resumed run, a mid-epoch resume that skips the batches already trained, and an uninterrupted
    run all see the same batches. The same holds for the view drawn per example (the orientation of a cached
    flip, `pipeline.data.augmentation`).

    Attributes:
        examples: Examples in the split.
        batch_size: Examples per batch (each epoch's last batch may be smaller).
        seed: The run's training seed.
        views: Views per example to draw one from (1: nothing drawn).
    """

    examples: int
    batch_size: int
    seed: int
    views: int = 1

    @property
    def batches_per_epoch(self) -> int:
        return math.ceil(self.examples / self.batch_size)

    def batches(self, *, first_epoch: int = 0, end_epoch: int | None = None, skip_batches: int = 0) -> tf.data.Dataset:
        """Batches of (positions, views) from `first_epoch` on: epoch after epoch, each in its own order.

        Args:
            first_epoch: The first epoch's global index (its order is drawn from it).
            end_epoch: The epoch after the last (exclusive); None for an endless stream.
            skip_batches: Batches of the first epoch already trained (a mid-epoch resume), left out.

        Returns:
            A dataset of (int64 positions (batch,), int64 view indices (batch,)).
        """
        import tensorflow as tf

        epochs = (
            tf.data.Dataset.counter(first_epoch) if end_epoch is None else tf.data.Dataset.range(first_epoch, end_epoch)
        )
        examples, views, seed = self.examples, self.views, self.seed

        def one_epoch(epoch: tf.Tensor) -> tf.data.Dataset:
            epoch_seed = tf.stack([tf.constant(seed, tf.int64), epoch])
            order = tf.random.experimental.stateless_shuffle(tf.range(examples, dtype=tf.int64), seed=epoch_seed)
            # A second stream of the same seeds (offset in the key) for the views, drawn per example.
            drawn = tf.random.stateless_uniform(
                [examples], seed=epoch_seed + tf.constant([0, 2**31], tf.int64), maxval=views, dtype=tf.int64
            )
            return tf.data.Dataset.from_tensor_slices((order, tf.gather(drawn, order))).batch(self.batch_size)

        return epochs.flat_map(one_epoch).skip(skip_batches)

    def permutation(self, epoch: int) -> np.ndarray:
        """Epoch `epoch`'s order of the examples, as the batches hold them."""
        return np.concatenate(
            [positions.numpy() for positions, _views in self.batches(first_epoch=epoch, end_epoch=epoch + 1)]
        )


def _in_order(examples: int, batch_size: int) -> tf.data.Dataset:
    """Batches of (positions, views) of one pass in order, view 0: validation, test and prediction data."""
    import tensorflow as tf

    positions = tf.data.Dataset.range(examples).batch(batch_size)
    return positions.map(lambda batch: (batch, tf.zeros_like(batch)))


def _row_reader(array: np.ndarray) -> Callable[[tf.Tensor], tf.Tensor]:
    """A function from a batch of positions to those rows of `array`, read without copying a memmap into memory.

    Why two ways: an in-memory array is one constant tensor that `tf.gather` indexes; a memmap (the prepare
    stage's image cache, the activation store) can be larger than RAM, so each batch reads only its rows.
    """
    import tensorflow as tf

    if not isinstance(array, np.memmap):
        table = tf.constant(array)
        return lambda positions: tf.gather(table, positions)
    # Only a read-only map may drop its pages: a copy-on-write one ("c") would lose its changes.
    mapping = getattr(array, "_mmap", None) if getattr(array, "mode", None) == "r" else None
    row_shape = array.shape[1:]

    def read(positions: np.ndarray) -> np.ndarray:
        # Fancy indexing of a memmap reads only these rows.
        rows = np.ascontiguousarray(array[positions])
        if mapping is not None and hasattr(mmap, "MADV_DONTNEED"):
            # The pages read stay in the kernel's page cache but leave this process's RSS, which would
            # otherwise grow to the size of the split over an epoch.
            mapping.madvise(mmap.MADV_DONTNEED)
        return rows

    def gather(positions: tf.Tensor) -> tf.Tensor:
        rows = tf.numpy_function(read, [positions], tf.as_dtype(array.dtype), stateful=False)
        return tf.ensure_shape(rows, (None, *row_shape))

    return gather


def _batches_of(views: list[np.ndarray], labels: np.ndarray, positions: tf.data.Dataset) -> tf.data.Dataset:
    """(rows, labels) for each batch of (positions, views): each example's row taken from its drawn view."""
    import tensorflow as tf

    readers = [_row_reader(view) for view in views]
    label_table = tf.constant(labels.astype(np.int64))

    def gather(batch: tf.Tensor, drawn: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        if len(readers) == 1:
            rows = readers[0](batch)
        else:
            stacked = tf.stack([read(batch) for read in readers], axis=1)
            rows = tf.gather(stacked, drawn, axis=1, batch_dims=1)
        return rows, tf.gather(label_table, batch)

    return positions.map(gather)


def image_dataset(
    images: np.ndarray,
    labels: np.ndarray,
    *,
    image_size: int,
    batch_size: int,
    preprocessing: keras.layers.Layer | None = None,
    augmentation: keras.layers.Layer | None = None,
    flip: str = "none",
    positions: tf.data.Dataset | None = None,
) -> tf.data.Dataset:
    """Builds a batched, prefetched dataset of (image, label).

    Args:
        images: uint8 images, grey (N, H, W) or colour (N, H, W, C); a memmap is read batch by batch.
        labels: Integer labels (N,).
        image_size: Square size the model expects.
        batch_size: Images per batch (of the single pass in order; `positions` sets its own).
        preprocessing: The backbone's own input scaling; None leaves pixels on 0..255 (for a model
            that holds its preprocessing).
        augmentation: Random layers applied (in training mode) to the 0..255 images before the
            preprocessing; None for none (validation, test and prediction data).
        flip: Flip every image this way ("none" keeps them): the second orientation of a cached flip,
            see `pipeline.data.augmentation`.
        positions: Training batches from `EpochOrder.batches` (epoch after epoch, in the run's order);
            None for one pass over the images in order.

    Returns:
        A dataset yielding (float32 images, int64 labels) batches.
    """
    import tensorflow as tf

    order = positions if positions is not None else _in_order(len(labels), batch_size)
    dataset = _batches_of([images], labels, order)

    def prepare(batch_images: tf.Tensor, batch_labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        batch_images = to_model_input(batch_images, image_size=image_size)
        if flip != "none":
            batch_images = flip_images(batch_images, flip)
        if augmentation is not None:
            batch_images = augmentation(batch_images, training=True)
        if preprocessing is not None:
            batch_images = preprocessing(batch_images)
        return batch_images, batch_labels

    return dataset.map(prepare, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def array_dataset(
    views: list[np.ndarray], labels: np.ndarray, *, batch_size: int, positions: tf.data.Dataset | None = None
) -> tf.data.Dataset:
    """Builds a batched dataset from cached activations (see `pipeline.training.features`).

    Args:
        views: Activations of each view of the examples, all of the shape (N, ...) and in the same example
            order: one array, or one per orientation of a cached flip (each epoch draws one per example,
            reproducing the random flip). Memmaps are read batch by batch.
        labels: Integer labels (N,).
        batch_size: Examples per batch (of the single pass in order; `positions` sets its own).
        positions: Training batches from `EpochOrder.batches` (with `views=len(views)`); None for one pass in
            order over the first view.

    Returns:
        A dataset yielding (float activations, int64 labels) batches.
    """
    import tensorflow as tf

    order = positions if positions is not None else _in_order(len(labels), batch_size)
    return _batches_of(views, labels, order).prefetch(tf.data.AUTOTUNE)
