"""Frozen-prefix cache: run the frozen lower part of the network once, train only the top.

Why: with BatchNormalization frozen and no augmentation, the layers below the lowest trainable
block compute the same activations every epoch. Recomputing them is most of the cost of fine-tuning
on a CPU (STACK_NOTES: a frozen backbone recomputed every epoch is the main waste). This module
computes the activations at the deepest cut any phase needs once, derives each phase's cut from
them, and hands `fit` a sub-model that starts at that cut. The sub-model shares its layers with the
full classifier, so what it learns is what the full model holds; the result is mathematically the
training of the full model, only faster.

A phase's cut is the input of its lowest trainable block (for the frozen phase, the pooled feature
vector). When the cached activations would exceed the memory budget, or when a phase trains the
whole backbone, the full model is trained on images instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from pipeline.data.datasets import array_dataset, image_dataset
from pipeline.head import Classifier


@dataclass(frozen=True)
class ImageSplit:
    """Images of one split with their labels, still uint8."""

    images: np.ndarray
    labels: np.ndarray


@dataclass(frozen=True)
class PhaseData:
    """What one phase fits: the model to compile and its training and validation data."""

    model: keras.Model
    train: tf.data.Dataset
    val: tf.data.Dataset
    cached: bool


def cut_tensor(classifier: Classifier, trainable_blocks: int) -> keras.KerasTensor:
    """The tensor a phase with the top `trainable_blocks` blocks trainable starts from.

    Args:
        classifier: The classifier.
        trainable_blocks: Number of trainable block groups from the top.

    Returns:
        The pooled features for 0, the output of the highest frozen group otherwise, and the model
        input when every group trains.
    """
    groups = classifier.backbone.blocks_top_down
    if trainable_blocks == 0:
        return classifier.pooled
    if trainable_blocks >= len(groups):
        return classifier.model.input
    highest_frozen = groups[trainable_blocks]
    return classifier.model.get_layer(highest_frozen.layer_names[-1]).output


def _bytes_per_example(tensor: keras.KerasTensor) -> int:
    return int(np.prod(tensor.shape[1:])) * np.dtype(tensor.dtype).itemsize


class PhaseDataFactory:
    """Builds each phase's model and data, caching frozen activations when they fit the budget.

    Args:
        classifier: The classifier being fine-tuned.
        train: Training images.
        val: Validation images.
        deepest_trainable_blocks: The largest `trainable_blocks` of any phase: its cut is the one
            computed from images, once.
        preprocessing: The backbone's input scaling.
        image_size: Square input size.
        batch_size: Images per batch.
        seed: Seed of the training shuffle.
        cache_limit_bytes: Largest cache allowed; 0 disables caching.
    """

    def __init__(
        self,
        classifier: Classifier,
        *,
        train: ImageSplit,
        val: ImageSplit,
        deepest_trainable_blocks: int,
        preprocessing: keras.layers.Layer,
        image_size: int,
        batch_size: int,
        seed: int,
        cache_limit_bytes: int,
    ) -> None:
        self._classifier = classifier
        self._splits = {"train": train, "val": val}
        self._preprocessing = preprocessing
        self._image_size = image_size
        self._batch_size = batch_size
        self._seed = seed
        self._base_cut = cut_tensor(classifier, deepest_trainable_blocks)
        examples = len(train.labels) + len(val.labels)
        self.estimated_cache_bytes = _bytes_per_example(self._base_cut) * examples
        self.caching = self._base_cut is not classifier.model.input and self.estimated_cache_bytes <= cache_limit_bytes
        self._base_activations: dict[str, np.ndarray] | None = None

    def _images(self, split: str, *, shuffle: bool) -> tf.data.Dataset:
        data = self._splits[split]
        return image_dataset(
            data.images,
            data.labels,
            image_size=self._image_size,
            batch_size=self._batch_size,
            preprocessing=self._preprocessing,
            shuffle=shuffle,
            seed=self._seed,
        )

    def _base(self) -> dict[str, np.ndarray]:
        if self._base_activations is None:
            prefix = keras.Model(self._classifier.model.input, self._base_cut)
            self._base_activations = {
                split: prefix.predict(self._images(split, shuffle=False), verbose=0) for split in self._splits
            }
        return self._base_activations

    def for_phase(self, trainable_blocks: int) -> PhaseData:
        """Model and data for a phase; call after the phase's `trainable` flags are set.

        Args:
            trainable_blocks: Number of trainable block groups from the top.

        Returns:
            The model to compile and fit, with its data.
        """
        cut = cut_tensor(self._classifier, trainable_blocks)
        if not self.caching or cut is self._classifier.model.input:
            return PhaseData(
                model=self._classifier.model,
                train=self._images("train", shuffle=True),
                val=self._images("val", shuffle=False),
                cached=False,
            )
        base = self._base()
        if cut is self._base_cut:
            activations = base
        else:
            # The layers between the base cut and this cut may have trained in an earlier phase
            # and are frozen now: recompute from the base with today's weights.
            segment = keras.Model(self._base_cut, cut)
            activations = {
                split: segment.predict(values, batch_size=self._batch_size, verbose=0) for split, values in base.items()
            }
        return PhaseData(
            model=keras.Model(cut, self._classifier.model.output),
            train=array_dataset(
                activations["train"],
                self._splits["train"].labels,
                batch_size=self._batch_size,
                shuffle=True,
                seed=self._seed,
            ),
            val=array_dataset(
                activations["val"],
                self._splits["val"].labels,
                batch_size=self._batch_size,
                shuffle=False,
                seed=self._seed,
            ),
            cached=True,
        )
