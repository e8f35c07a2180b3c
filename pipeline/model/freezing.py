"""Which layers train: freeze the backbone, unfreeze the top k named blocks, and a BatchNorm policy.

Why: under Keras 3 `training=False` is not honoured inside `fit`, so the only thing that keeps a
BatchNormalization layer's moving statistics still is `trainable = False`; and an inner layer's flag
counts only while its container is trainable. So the order is: container on, groups by position,
then the BatchNorm layers by policy. The caller must recompile after this (Keras silently ignores
the change otherwise); `pipeline.training.recipe` compiles a fresh optimiser for every phase.

BatchNorm policies, for the BN layers of the unfrozen blocks (those of frozen blocks are always frozen):
- `frozen`: inference mode, nothing in the layer changes (the Keras guide's advice for fine-tuning).
- `affine`: gamma and beta train while the layer still normalises with its frozen moving statistics
  (what fastai's `train_bn` keeps trainable, minus the statistics). Keras has no switch for this: a
  trainable BN layer always uses batch statistics in `fit`. So the layer's class is swapped for a
  subclass whose `call` forces inference mode; its variables and config are untouched, and any other
  policy swaps the original class back (so a saved model never names our subclass).
- `trainable`: gamma, beta and the moving statistics all follow the new data.

A TF Hub or SavedModel backbone is one `keras.layers.TFSMLayer` whose BatchNorm layers cannot be reached:
what runs is the SavedModel's inference endpoint (moving statistics fixed, gamma and beta train with the
other weights when unfrozen: `affine`) or its training endpoint (batch statistics, moving statistics
updated: `trainable`). TFSMLayer calls the training endpoint whenever `fit` passes training=True, even while
the layer is frozen, so a frozen or `affine` SavedModel gets its inference function in the training slot;
its class and config stay TFSMLayer's own. `frozen` cannot be honoured for an unfrozen SavedModel, nor
`trainable` without a training endpoint: both are refused.

Layers that are random while training (Dropout and its kin, Gaussian noise) ignore `trainable`, so in a
frozen block they would still drop units on every training step: a backbone from a `.keras` file may
end in its old head's dropout, and keras.applications' EfficientNets hold stochastic-depth dropout.
Frozen, they are switched to inference mode by the same class swap, so a frozen block computes the
same function in every step; that is also what the frozen-prefix cache (`pipeline.training.features`) computes
once. `restore_layer_classes` undoes every swap before a model is saved.
"""

from __future__ import annotations

import csv
import functools
import math
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import keras

from pipeline.backbones.base import BlockGroup
from pipeline.runtime import atomic

BN_POLICIES = ("frozen", "affine", "trainable")
HEAD_BLOCK = "head"
# Layers whose training-mode output is random; frozen, they run in inference mode.
RANDOM_LAYERS = (
    keras.layers.Dropout,
    keras.layers.AlphaDropout,
    keras.layers.GaussianDropout,
    keras.layers.GaussianNoise,
)


class _InferenceModeBatchNorm:
    """Mixin: normalise with the moving statistics even while training; gamma and beta still get gradients."""

    def call(self, inputs: Any, training: bool | None = None, mask: Any = None) -> Any:
        return super().call(inputs, training=False, mask=mask)


class _InferenceModeRandomLayer:
    """Mixin: a dropout or noise layer that passes its input through as at inference, even while training."""

    def call(self, inputs: Any, training: bool | None = None) -> Any:
        return super().call(inputs, training=False)


@functools.cache
def _affine_class(batch_norm_class: type) -> type:
    return type(f"Affine{batch_norm_class.__name__}", (_InferenceModeBatchNorm, batch_norm_class), {})


@functools.cache
def _frozen_random_class(layer_class: type) -> type:
    return type(f"Frozen{layer_class.__name__}", (_InferenceModeRandomLayer, layer_class), {})


def _original_class(layer: keras.layers.Layer) -> type:
    cls = type(layer)
    swapped = issubclass(cls, (_InferenceModeBatchNorm, _InferenceModeRandomLayer))
    return cls.__bases__[1] if swapped else cls


def restore_layer_classes(model: keras.Model) -> None:
    """Gives every layer swapped by a BatchNorm policy or by freezing its own Keras class back.

    Why: a saved model must name only Keras' classes, or it would not load without this repository.
    The layers' `trainable` flags stay as they are.
    """
    for layer in model.layers:
        layer.__class__ = _original_class(layer)


def apply_bn_policy(layer: keras.layers.BatchNormalization, *, trains: bool, policy: str) -> None:
    """Sets one BatchNormalization layer of a block that `trains` (or not) according to `policy`."""
    original = _original_class(layer)
    effective = policy if trains else "frozen"
    layer.__class__ = _affine_class(original) if effective == "affine" else original
    layer.trainable = effective in ("affine", "trainable")


# TFSMLayer -> its training endpoint's function, kept while the inference function stands in for it.
_TRAINING_FUNCTIONS: weakref.WeakKeyDictionary[keras.layers.TFSMLayer, Any] = weakref.WeakKeyDictionary()


def apply_saved_model_policy(layer: keras.layers.TFSMLayer, *, trains: bool, policy: str) -> None:
    """Sets a SavedModel backbone's layer, which `trains` (or not), to the BatchNorm behaviour of `policy`.

    Raises:
        ValueError: `policy` cannot be honoured for an unfrozen SavedModel: `frozen` (its BatchNorm weights
            train with the rest of it), or `trainable` without a training endpoint.
    """
    if trains and policy == "frozen":
        raise ValueError(
            f"bn_policy frozen cannot be honoured by {layer.name}: a SavedModel's BatchNorm gamma and beta train "
            "with its other weights; use affine, or trainable with a training endpoint"
        )
    if trains and policy == "trainable" and not layer.call_training_endpoint:
        raise ValueError(
            f"bn_policy trainable needs a training endpoint: {layer.name} was loaded without "
            "call_training_endpoint, so it always normalises with its fixed moving statistics (affine)"
        )
    if layer.call_training_endpoint:
        training_function = _TRAINING_FUNCTIONS.setdefault(layer, layer.call_training_endpoint_fn)
        layer.call_training_endpoint_fn = (
            training_function if trains and policy == "trainable" else layer.call_endpoint_fn
        )
    layer.trainable = trains


def bn_mode(layer: keras.layers.Layer) -> str:
    """The policy a BatchNormalization layer, or a SavedModel's layer, is under now: frozen, affine or trainable."""
    if isinstance(layer, keras.layers.TFSMLayer):
        if not layer.trainable:
            return "frozen"
        uses_training_endpoint = layer.call_training_endpoint and (
            layer.call_training_endpoint_fn is not layer.call_endpoint_fn
        )
        return "trainable" if uses_training_endpoint else "affine"
    if isinstance(layer, _InferenceModeBatchNorm):
        return "affine"
    return "trainable" if layer.trainable else "frozen"


def set_trainable_blocks(
    model: keras.Model,
    blocks_top_down: tuple[BlockGroup, ...],
    *,
    trainable_blocks: int,
    bn_policy: str = "frozen",
) -> dict[str, bool]:
    """Makes the top `trainable_blocks` groups trainable and every other backbone layer frozen.

    Layers outside the groups (the new head) stay trainable, their BatchNorm included. Dropout and noise
    layers of frozen groups run in inference mode (see the module doc).

    Args:
        model: The classifier holding the backbone's layers.
        blocks_top_down: The backbone's block groups, top first.
        trainable_blocks: How many groups from the top train; 0 freezes the whole backbone.
        bn_policy: What the BatchNormalization layers of the trainable groups do (see the module doc).

    Returns:
        Group name -> whether it trains.

    Raises:
        ValueError: `trainable_blocks` is negative or exceeds the number of groups, the policy is unknown, or
            a SavedModel backbone cannot honour it (see `apply_saved_model_policy`).
    """
    if not 0 <= trainable_blocks <= len(blocks_top_down):
        raise ValueError(
            f"trainable_blocks is {trainable_blocks}; the backbone has {len(blocks_top_down)} blocks "
            f"({', '.join(group.name for group in blocks_top_down)})"
        )
    if bn_policy not in BN_POLICIES:
        raise ValueError(f"unknown bn_policy {bn_policy!r}; allowed: {', '.join(BN_POLICIES)}")
    model.trainable = True
    state: dict[str, bool] = {}
    for position, group in enumerate(blocks_top_down):
        trains = position < trainable_blocks
        state[group.name] = trains
        for name in group.layer_names:
            layer = model.get_layer(name)
            if isinstance(layer, keras.layers.BatchNormalization):
                apply_bn_policy(layer, trains=trains, policy=bn_policy)
                continue
            if isinstance(layer, keras.layers.TFSMLayer):
                apply_saved_model_policy(layer, trains=trains, policy=bn_policy)
                continue
            if isinstance(layer, RANDOM_LAYERS):
                original = _original_class(layer)
                layer.__class__ = original if trains else _frozen_random_class(original)
            layer.trainable = trains
    return state


def trainable_layer_names(model: keras.Model) -> list[str]:
    """Names of the layers that own trainable weights, in model order."""
    return [layer.name for layer in model.layers if layer.trainable_weights]


@dataclass(frozen=True)
class LayerState:
    """One row of the trainable-layer map: what a layer does in a phase."""

    phase: int
    phase_name: str
    layer: str
    block: str
    layer_type: str
    trainable: bool
    parameters: int
    trainable_parameters: int
    lr_multiplier: float
    batch_norm: str


def layer_map(
    model: keras.Model,
    blocks_top_down: Sequence[BlockGroup],
    *,
    phase: int,
    phase_name: str,
    lr_multipliers: Mapping[str, float],
) -> list[LayerState]:
    """Describes every layer that owns weights: its block, whether it trains, its size and LR multiplier.

    Args:
        model: The classifier, with the phase's `trainable` flags set.
        blocks_top_down: The backbone's block groups; layers outside them belong to the head.
        phase: Index of the phase.
        phase_name: Name of the phase.
        lr_multipliers: Layer name -> multiple of the phase's LR (absent: 1).

    Returns:
        One row per layer with weights, in model order.
    """
    block_of = {name: group.name for group in blocks_top_down for name in group.layer_names}
    rows = []
    for layer in model.layers:
        if not layer.weights:
            continue
        trainable = bool(layer.trainable_weights)
        is_batch_norm = isinstance(layer, keras.layers.BatchNormalization)
        has_batch_norm_mode = is_batch_norm or isinstance(layer, keras.layers.TFSMLayer)
        rows.append(
            LayerState(
                phase=phase,
                phase_name=phase_name,
                layer=layer.name,
                block=block_of.get(layer.name, HEAD_BLOCK),
                layer_type=_original_class(layer).__name__ if is_batch_norm else type(layer).__name__,
                trainable=trainable,
                parameters=sum(math.prod(weight.shape) for weight in layer.weights),
                trainable_parameters=sum(math.prod(weight.shape) for weight in layer.trainable_weights),
                lr_multiplier=float(lr_multipliers.get(layer.name, 1.0)) if trainable else 0.0,
                batch_norm=bn_mode(layer) if has_batch_norm_mode else "",
            )
        )
    return rows


def save_layer_map(rows: Sequence[LayerState], path: Path) -> None:
    """Writes the trainable-layer map of every phase as one CSV, atomically (`pipeline.runtime.atomic`)."""
    fields = list(LayerState.__dataclass_fields__)
    with atomic.atomic_path(path) as temporary, temporary.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fields)
        writer.writeheader()
        writer.writerows(asdict(row) for row in rows)
