"""From arrays of images to tf.data pipelines the backbone can eat.

Why: Fashion-MNIST is 28x28 grey, ImageNet backbones want RGB at their own size and scaling. The
small uint8 originals are cached (a few MB) and resized per batch, rather than caching the resized
float images (about 110 KB each at 96 px), so memory stays flat while the work per epoch stays small.
"""

from __future__ import annotations

import mmap
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


def image_dataset(
    images: np.ndarray,
    labels: np.ndarray,
    *,
    image_size: int,
    batch_size: int,
    preprocessing: keras.layers.Layer | None = None,
    augmentation: keras.layers.Layer | None = None,
    flip: str = "none",
    shuffle: bool = False,
    seed: int = 0,
) -> tf.data.Dataset:
    """Builds a batched, prefetched dataset of (image, label).

    Args:
        images: uint8 images, grey (N, H, W) or colour (N, H, W, C).
        labels: Integer labels (N,).
        image_size: Square size the model expects.
        batch_size: Images per batch.
        preprocessing: The backbone's own input scaling; None leaves pixels on 0..255 (for a model
            that holds its preprocessing).
        augmentation: Random layers applied (in training mode) to the 0..255 images before the
            preprocessing; None for none (validation, test and prediction data).
        flip: Flip every image this way ("none" keeps them): the second orientation of a cached flip,
            see `pipeline.data.augmentation`.
        shuffle: Reshuffle every epoch (training data).
        seed: Seed of the shuffle.

    Returns:
        A dataset yielding (float32 images, int64 labels) batches.
    """
    import tensorflow as tf

    if isinstance(images, np.memmap):
        dataset = _memmap_batches(images, labels, batch_size=batch_size, shuffle=shuffle, seed=seed)
    else:
        dataset = tf.data.Dataset.from_tensor_slices((images, labels.astype(np.int64))).cache()
        if shuffle:
            dataset = dataset.shuffle(len(labels), seed=seed, reshuffle_each_iteration=True)
        dataset = dataset.batch(batch_size)

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
    features: np.ndarray, labels: np.ndarray, *, batch_size: int, shuffle: bool, seed: int
) -> tf.data.Dataset:
    """Builds a batched dataset from cached activations (see `pipeline.training.features`)."""
    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensor_slices((features, labels.astype(np.int64)))
    if shuffle:
        dataset = dataset.shuffle(len(labels), seed=seed, reshuffle_each_iteration=True)
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def view_dataset(views: list[np.ndarray], labels: np.ndarray, *, batch_size: int, seed: int) -> tf.data.Dataset:
    """Builds shuffled training batches in which every example is one of its cached views, drawn anew each epoch.

    Why: a flip-only augmentation has two possible inputs per image (see `pipeline.data.augmentation`); their
    frozen activations are cached side by side, and drawing one per example and epoch reproduces the
    random flip. `Dataset.random` with `rerandomize_each_iteration` gives new draws on every pass
    while staying reproducible from the seed.

    Args:
        views: Activations of each view, all of the same shape (N, ...), in the same example order.
        labels: Integer labels (N,).
        batch_size: Examples per batch.
        seed: Seed of the shuffle and of the draws.

    Returns:
        A dataset yielding (float activations, int64 labels) batches.
    """
    import tensorflow as tf

    examples = tf.data.Dataset.from_tensor_slices((tuple(views), labels.astype(np.int64)))
    draws = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
    dataset = tf.data.Dataset.zip(examples, draws)
    dataset = dataset.shuffle(len(labels), seed=seed, reshuffle_each_iteration=True).batch(batch_size)

    def pick(example: tuple[tuple[tf.Tensor, ...], tf.Tensor], draw: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        batch_views, batch_labels = example
        stacked = tf.stack(batch_views, axis=1)
        return tf.gather(stacked, draw % len(views), axis=1, batch_dims=1), batch_labels

    return dataset.map(pick, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def _memmap_batches(
    images: np.memmap, labels: np.ndarray, *, batch_size: int, shuffle: bool, seed: int
) -> tf.data.Dataset:
    """Batches of (uint8 images, int64 labels) read from a memmap one batch at a time.

    Why: `from_tensor_slices` would copy the whole array into one tensor; an image cache that the
    prepare stage wrote can be larger than RAM. Only positions are shuffled (the same permutation as
    shuffling the images themselves with this seed), and each batch reads just its rows from disk.
    """
    import tensorflow as tf

    positions = tf.data.Dataset.from_tensor_slices(np.arange(len(labels), dtype=np.int64))
    if shuffle:
        positions = positions.shuffle(len(labels), seed=seed, reshuffle_each_iteration=True)
    label_table = tf.constant(labels.astype(np.int64))
    image_shape = images.shape[1:]

    # Only a read-only map may drop its pages: a copy-on-write one ("c") would lose its changes.
    mapping = getattr(images, "_mmap", None) if getattr(images, "mode", None) == "r" else None

    def read(batch: np.ndarray) -> np.ndarray:
        # Fancy indexing of a memmap reads only these rows.
        rows = np.ascontiguousarray(images[batch])
        if mapping is not None and hasattr(mmap, "MADV_DONTNEED"):
            # The pages read stay in the kernel's page cache but leave this process's RSS, which would
            # otherwise grow to the size of the split over an epoch.
            mapping.madvise(mmap.MADV_DONTNEED)
        return rows

    def gather(batch: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        batch_images = tf.numpy_function(read, [batch], tf.uint8, stateful=False)
        batch_images = tf.ensure_shape(batch_images, (None, *image_shape))
        return batch_images, tf.gather(label_table, batch)

    return positions.batch(batch_size).map(gather)
