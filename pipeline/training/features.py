"""Frozen-prefix cache: run the frozen lower part of the network once, train only the top.

Why: with BatchNormalization frozen and no augmentation, the layers below the lowest trainable
block compute the same activations every epoch. Recomputing them is most of the cost of fine-tuning
on a CPU (measured: a frozen backbone recomputed every epoch is the main waste of CPU time). This module
computes the activations at the deepest cut any phase needs once, derives each phase's cut from
them, and hands `fit` a sub-model that starts at that cut. The sub-model shares its layers with the
full classifier, so what it learns is what the full model holds; the result is mathematically the
training of the full model, only faster.

A phase's cut is the input of its lowest trainable block (for the frozen phase, the pooled feature
vector). The full model is trained on images instead when the cached activations would exceed the
memory budget, when a phase trains the whole backbone, or when augmentation other than a flip alone is
on (the backbone then sees different pixels every epoch); each phase says which and why. A flip alone
keeps the cache: both orientations of every training image are computed once and each epoch draws one
per image, as RandomFlip would (see `pipeline.data.augmentation`).

BatchNorm policies (`pipeline.model.freezing`) keep this correct: whatever the policy of the unfrozen
blocks, the layers below a phase's cut are frozen and in inference mode, and activations between the
deepest cut and a phase's cut are recomputed with the weights and statistics of the moment.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import keras
import numpy as np
import tensorflow as tf

from pipeline.data.augmentation import build_augmentation, cacheable_flip
from pipeline.data.datasets import EpochOrder, array_dataset, image_dataset
from pipeline.model.head import Classifier
from pipeline.training.activation_store import (
    ActivationKey,
    ActivationStore,
    StoredActivations,
    describe_layer,
    images_digest,
    weights_digest,
)
from pipeline.training.losses import needs_one_hot, one_hot_labels

if TYPE_CHECKING:
    from pipeline.params.train import TrainParams


@dataclass(frozen=True)
class ImageSplit:
    """Images of one split with their labels, still uint8."""

    images: np.ndarray
    labels: np.ndarray


@dataclass(frozen=True)
class PhaseData:
    """What one phase fits: the model to compile and its training and validation data.

    Attributes:
        model: The model to compile and fit (a sub-model from the phase's cut under the cache).
        val: Validation batches, in order.
        cached: Whether the phase trains on cached activations.
        steps_per_epoch: Batches of one training epoch.
        note: Why the phase trains on what it trains on.
        order: The training order of every epoch (`pipeline.data.datasets.EpochOrder`).
        gather: Training batches of (inputs, labels) for a dataset of `order`'s batches.
    """

    model: keras.Model
    val: tf.data.Dataset
    cached: bool
    steps_per_epoch: int
    note: str
    order: EpochOrder
    gather: Callable[[tf.data.Dataset], tf.data.Dataset]

    def train(self, *, first_epoch: int = 0, end_epoch: int | None = None, skip_batches: int = 0) -> tf.data.Dataset:
        """Training batches from `first_epoch` on, epoch after epoch (`fit` with `steps_per_epoch`).

        Args:
            first_epoch: The first epoch's global index: its order is the one an uninterrupted run draws there.
            end_epoch: The epoch after the last (exclusive); None for an endless stream.
            skip_batches: Batches of the first epoch already trained (a resume from a mid-epoch checkpoint).
        """
        return self.gather(self.order.batches(first_epoch=first_epoch, end_epoch=end_epoch, skip_batches=skip_batches))


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


@dataclass(frozen=True)
class InputSettings:
    """How a phase is fed: the images' size, the batches, the shuffle seed, augmentation and labels, the cache.

    Attributes:
        image_size: Square input size of the backbone.
        batch_size: Images per batch.
        seed: Seed of the training shuffle (and of the augmentation's random layers).
        cache_limit_bytes: Largest frozen-feature cache allowed; 0 disables caching.
        augmentation: Random layers for the training images (`pipeline.data.augmentation`), or None;
            anything but a flip alone disables caching (a flip alone doubles the training part of the cache).
        label_smoothing: Label smoothing of the cross-entropy; above 0 the labels are fed one-hot.
        activation_store: Where the frozen activations are kept between runs
            (`pipeline.training.activation_store`), or None to keep them in memory for this run only.
        workers: Training workers in step (MultiWorkerMirroredStrategy); above 1 the frozen activations are
            not cached (`PhaseDataFactory`).
    """

    image_size: int
    batch_size: int
    seed: int
    cache_limit_bytes: int
    augmentation: keras.layers.Layer | None = None
    label_smoothing: float = 0.0
    activation_store: ActivationStore | None = None
    workers: int = 1

    @classmethod
    def from_params(cls, train: TrainParams, *, image_size: int, workers: int = 1) -> InputSettings:
        """The settings of the `train` section (batch size, seed, `feature_cache_mb`, augmentation, smoothing,
        `activation_store`), for `workers` training workers."""
        store = train.activation_store
        return cls(
            image_size=image_size,
            batch_size=train.batch_size,
            seed=train.seed,
            cache_limit_bytes=train.feature_cache_mb * 2**20,
            augmentation=build_augmentation(train.augmentation, seed=train.seed),
            label_smoothing=train.label_smoothing,
            activation_store=ActivationStore(Path(store.path), limit_bytes=store.limit_mb * 2**20)
            if store.limit_mb > 0
            else None,
            workers=workers,
        )

    def steps_per_epoch(self, examples: int) -> int:
        """Optimiser steps of one epoch on `examples` training images (the last batch may be partial)."""
        return math.ceil(examples / self.batch_size)


class PhaseDataFactory:
    """Builds each phase's model and data, caching frozen activations when they fit the budget.

    Args:
        classifier: The classifier being fine-tuned.
        train: Training images.
        val: Validation images.
        inputs: How the images are fed (size, batches, seed, augmentation, labels, cache budget).
        deepest_trainable_blocks: The largest `trainable_blocks` of any phase: its cut is the one
            computed from images, once.
        verbose: Whether the passes that fill the cache are announced (0: silent); above 0 a
            line says what each pass computes, since the first takes minutes on a large dataset.
        base_activations: The activations at the base cut, already computed (one array per view of each
            split, as `base_activations()` returns them): nothing is computed from images, nor stored.
    """

    def __init__(
        self,
        classifier: Classifier,
        *,
        train: ImageSplit,
        val: ImageSplit,
        inputs: InputSettings,
        deepest_trainable_blocks: int,
        verbose: int = 0,
        base_activations: dict[str, list[np.ndarray]] | None = None,
    ) -> None:
        num_classes = classifier.model.output_shape[-1]
        augmentation, cache_limit_bytes = inputs.augmentation, inputs.cache_limit_bytes
        self._classifier = classifier
        self._verbose = verbose
        self._splits = {"train": train, "val": val}
        self._preprocessing = classifier.backbone.make_preprocessing()
        self._inputs = inputs
        self._one_hot_classes = num_classes if needs_one_hot(label_smoothing=inputs.label_smoothing) else None
        self.steps_per_epoch = inputs.steps_per_epoch(len(train.labels))
        self._base_cut = cut_tensor(classifier, deepest_trainable_blocks)
        self._flip = cacheable_flip(augmentation)
        self._train_views = ("none", self._flip) if self._flip else ("none",)
        examples = len(train.labels) * len(self._train_views) + len(val.labels)
        self.estimated_cache_bytes = _bytes_per_example(self._base_cut) * examples
        if inputs.workers > 1:
            # Each step's global batch draws from every image, so each worker would need the activations of them
            # all: the one-time pass repeated on every worker, with nothing shared. The frozen layers run in each
            # step instead (docs/training.md#several-workers says what it costs).
            self.caching = False
            self.cache_note = (
                f"{inputs.workers} workers: frozen activations are not cached (each worker would compute those of "
                "every image); the frozen layers run in every step"
            )
        elif augmentation is not None and self._flip is None:
            self.caching = False
            self.cache_note = "augmentation changes the images every epoch, so frozen activations cannot be reused"
        elif self.estimated_cache_bytes > cache_limit_bytes:
            self.caching = False
            self.cache_note = (
                f"frozen activations would take {self.estimated_cache_bytes / 2**20:.0f} MiB, over "
                f"train.feature_cache_mb ({cache_limit_bytes / 2**20:.0f} MiB)"
            )
        else:
            self.caching = True
            self.cache_note = "frozen activations computed once and reused"
            if self._flip:
                self.cache_note += (
                    f", for both orientations of the {self._flip} flip (each epoch draws one per training image)"
                )
        self._base_activations = base_activations
        self._store = inputs.activation_store if self.caching and base_activations is None else None
        self._prefix_digests: dict[str, str] = {}
        self._phases_served = 0
        self._images_digests: dict[str, str] = {}
        if self._store is not None and self.estimated_cache_bytes > self._store.limit_bytes:
            self._store = None
            self.cache_note += (
                f"; kept in memory only, since {self.estimated_cache_bytes / 2**20:.0f} MiB is over "
                f"train.activation_store.limit_mb ({self._inputs.activation_store.limit_bytes / 2**20:.0f} MiB)"
            )

    @property
    def uses_store(self) -> bool:
        """Whether the base cut's activations are read from (or written to) the activation store."""
        return self._store is not None

    def base_activations(self) -> dict[str, list[np.ndarray]]:
        """The activations at the base cut, one array per view of each split, computed or read once."""
        return self._base()

    def _images(
        self, split: str, *, positions: tf.data.Dataset | None = None, augment: bool = False, flip: str = "none"
    ) -> tf.data.Dataset:
        data = self._splits[split]
        return image_dataset(
            data.images,
            data.labels,
            image_size=self._inputs.image_size,
            batch_size=self._inputs.batch_size,
            preprocessing=self._preprocessing,
            augmentation=self._inputs.augmentation if augment else None,
            flip=flip,
            positions=positions,
        )

    def _order(self, views: int) -> EpochOrder:
        return EpochOrder(len(self._splits["train"].labels), self._inputs.batch_size, self._inputs.seed, views=views)

    def _labelled(self, dataset: tf.data.Dataset) -> tf.data.Dataset:
        if self._one_hot_classes is None:
            return dataset
        return one_hot_labels(dataset, num_classes=self._one_hot_classes)

    def _base(self) -> dict[str, list[np.ndarray]]:
        """Activations at the base cut: one array per view (training orientations; one for val)."""
        if self._base_activations is None:
            prefix = keras.Model(self._classifier.model.input, self._base_cut)
            views = {"train": self._train_views, "val": ("none",)}
            stored: list[StoredActivations] = []
            self._base_activations = {
                split: [
                    self._stored_view(
                        prefix,
                        split,
                        flip,
                        stored,
                        compute=lambda split=split, flip=flip: self._predict(
                            prefix, self._images(split, flip=flip), split, flip
                        ),
                    )
                    for flip in flips
                ]
                for split, flips in views.items()
            }
            if stored:
                self.cache_note = _store_note(stored, self._store) + self.cache_note.removeprefix(
                    "frozen activations computed once and reused"
                )
        return self._base_activations

    def _stored_view(
        self,
        prefix: keras.Model,
        split: str,
        flip: str,
        stored: list[StoredActivations],
        *,
        compute: Callable[[], np.ndarray],
    ) -> np.ndarray:
        """One view's activations at `prefix`'s cut: from the store when it holds them, else computed (and stored).

        Args:
            prefix: The model from the images to the cut: what the key describes (its layers and weights).
            split: The split.
            flip: The view's orientation.
            stored: Where the entries used are noted (for the phase's note).
            compute: Computes the activations when the store lacks them (from images, or from the base cut).
        """
        if self._store is None:
            return compute()
        cut_layer = prefix.output._keras_history.operation.name
        if cut_layer not in self._prefix_digests:
            # Every layer below the cut, configuration and weights (BatchNorm statistics included).
            self._prefix_digests[cut_layer] = weights_digest(
                (describe_layer(layer), [keras.ops.convert_to_numpy(weight) for weight in layer.weights])
                for layer in prefix.layers
            )
        if split not in self._images_digests:
            self._images_digests[split] = images_digest(self._splits[split].images)
        key = ActivationKey(
            backbone=self._classifier.backbone.name,
            weights_digest=self._prefix_digests[cut_layer],
            image_size=self._inputs.image_size,
            preprocessing=describe_layer(self._preprocessing),
            cut_layer=cut_layer,
            batchnorm="inference",  # `_forward_pass` runs the prefix with training=False
            dtype_policy=keras.config.dtype_policy().name,
            flip=flip,
            images_digest=self._images_digests[split],
        )
        found = self._store.fetch(key, compute, label=f"{split} images, flip {flip}")
        stored.append(found)
        return found.array

    def _predict(self, model: keras.Model, inputs: tf.data.Dataset | np.ndarray, split: str, flip: str) -> np.ndarray:
        """One pass that fills the cache, announced when verbose."""
        if self._verbose:
            orientation = "" if flip == "none" else f", {flip} flipped"
            # The layer that produced the cut tensor is what a user can find in the layer map.
            layer = model.output._keras_history.operation.name
            print(
                f"frozen layers up to {layer}: {len(self._splits[split].labels)} {split} images{orientation}, "
                "computed once for every epoch of the phase",
                flush=True,
            )
        return _forward_pass(model, inputs, batch_size=self._inputs.batch_size)

    def for_phase(self, trainable_blocks: int) -> PhaseData:
        """Model and data for a phase; call after the phase's `trainable` flags are set.

        Args:
            trainable_blocks: Number of trainable block groups from the top.

        Returns:
            The model to compile and fit, with its data.
        """
        cut = cut_tensor(self._classifier, trainable_blocks)
        first_phase = not self._phases_served
        self._phases_served += 1
        if not self.caching or cut is self._classifier.model.input:
            return PhaseData(
                model=self._classifier.model,
                val=self._labelled(self._images("val")),
                cached=False,
                steps_per_epoch=self.steps_per_epoch,
                note=self.cache_note if not self.caching else "the whole backbone trains: nothing frozen to cache",
                order=self._order(views=1),
                gather=lambda positions: self._labelled(self._images("train", positions=positions, augment=True)),
            )
        base = self._base()
        if cut is self._base_cut:
            activations = base
        else:
            # The layers between the base cut and this cut may have trained in an earlier phase
            # and are frozen now: recompute from the base with today's weights. Before any phase trained (the
            # run's first phase, usually the frozen one) they hold the pretrained weights, so their output is a
            # function of the backbone and the images alone, which the activation store keeps like the base's.
            segment = keras.Model(self._base_cut, cut)
            prefix = keras.Model(self._classifier.model.input, cut) if first_phase and self._store else None
            flips = {"train": self._train_views, "val": ("none",)}
            stored: list[StoredActivations] = []
            activations = {
                split: [
                    self._stored_view(
                        prefix,
                        split,
                        flip,
                        stored,
                        compute=lambda view=view, split=split, flip=flip: self._predict(segment, view, split, flip),
                    )
                    if prefix is not None
                    else self._predict(segment, view, split, flip)
                    for view, flip in zip(views, flips[split], strict=True)
                ]
                for split, views in base.items()
            }
        train_views, train_labels = activations["train"], self._splits["train"].labels
        note = self.cache_note
        if cut is not self._base_cut and first_phase and self._store is not None:
            segment_note = _store_note(stored, self._store).removeprefix("frozen activations ")
            note = f"{note}; the phase's own cut {segment_note}"
        return PhaseData(
            model=keras.Model(cut, self._classifier.model.output),
            val=self._labelled(
                array_dataset(activations["val"], self._splits["val"].labels, batch_size=self._inputs.batch_size)
            ),
            cached=True,
            steps_per_epoch=self.steps_per_epoch,
            note=note,
            order=self._order(views=len(train_views)),
            gather=lambda positions: self._labelled(
                array_dataset(train_views, train_labels, batch_size=self._inputs.batch_size, positions=positions)
            ),
        )


def _store_note(stored: list[StoredActivations], store: ActivationStore) -> str:
    """How the base activations came, for the phases' notes: read from the store, or computed and stored."""
    read = [entry for entry in stored if entry.read]
    if len(read) == len(stored):
        entries = ", ".join(entry.entry[:12] for entry in read)
        return (
            f"frozen activations read from the activation store {store.root} (entries {entries}, computed "
            f"{min(entry.computed_at for entry in read)})"
        )
    if read:
        return (
            f"frozen activations partly read from the activation store {store.root} ({len(read)} of {len(stored)} "
            "entries), the rest computed once and stored"
        )
    return f"frozen activations computed once and stored in the activation store {store.root}"


def _forward_pass(
    model: keras.Model, inputs: tf.data.Dataset | np.ndarray, *, batch_size: int, jit_compile: bool | None = None
) -> np.ndarray:
    """`model` in inference mode over every batch of `inputs`, traced once, for any batch size.

    Why not `model.predict`: Keras traces its predict step for the first batch's shape and again for the last,
    smaller batch, for each new model; the cache builds a new model for every cut (the frozen prefix, then a
    segment per phase), so on a small dataset most predict calls were traces, and TensorFlow warned that
    they "triggered tf.function retracing". A concrete function of any batch size traces each model once.
    XLA as Keras would choose it for this model (`model.jit_compile`: on GPUs, off on CPUs).

    Why the training batch size (`InputSettings.batch_size` batches the images and arrays the factory passes)
    and no XLA on a CPU: bench/frozen_pass.py measured neither to pay on 2 CPU cores (batches of 128 and 256 no
    faster than 64 beyond the noise of a shared machine; XLA's CPU convolutions 8-12x slower, its activations off
    by up to 1.6e-4), and a batch size of its own can change the last bit of some activations (CPU kernels are
    chosen by shape: seen on the tests' tiny backbone, op determinism on or off), which would make a run's results
    depend on it (docs/performance.md#the-one-time-pass). On a GPU, measure with that bench before changing either.

    Args:
        model: A sub-model of the classifier.
        inputs: Batches of (images, labels), or an array of activations, cut into `batch_size` rows.
        batch_size: Rows per call for an array.
        jit_compile: Whether the pass is compiled with XLA; None: as `model.jit_compile` says.

    Returns:
        The outputs, one row per input row, in order.
    """
    forward = traced_inference(model, jit_compile=model.jit_compile if jit_compile is None else jit_compile)
    if isinstance(inputs, np.ndarray):
        batches = (inputs[start : start + batch_size] for start in range(0, len(inputs), batch_size))
    else:
        batches = (images for images, _labels in inputs)
    return np.concatenate([keras.ops.convert_to_numpy(forward(batch)) for batch in batches])


def traced_inference(model: keras.Model, *, jit_compile: bool = False) -> Callable[[Any], Any]:
    """`model` in inference mode as one concrete function for any batch size, casting each batch to its input.

    Why: Keras' `predict` traces a step per model (and again for the last, smaller batch), and TensorFlow's
    tracing heuristic keys on the code of the traced function, so a process that builds many models (the
    cache's cuts, a probe per phase, several fine-tunes) warned that calls "triggered tf.function retracing".
    A concrete function traced here does not go through that heuristic and never retraces.

    Args:
        model: The model (its outputs may be one tensor or a list).
        jit_compile: Whether the function is compiled with XLA.

    Returns:
        A function of one batch returning the model's outputs for it.
    """
    forward = tf.function(lambda batch: model(batch, training=False), jit_compile=jit_compile).get_concrete_function(
        tf.TensorSpec((None, *model.input.shape[1:]), model.input.dtype)
    )
    # Under a mixed policy the preprocessing layer of the image pipeline yields float16 batches, which a concrete
    # function traced for the model's float32 input refuses; Keras' own call would cast them the same way.
    dtype = model.input.dtype
    return lambda batch: forward(tf.cast(batch, dtype))
