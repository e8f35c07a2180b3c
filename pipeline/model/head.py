"""The new classification head that replaces the backbone's ImageNet classifier.

Why: transfer learning keeps the pretrained features and learns a fresh classifier for the new
classes. The head is attached to the backbone's own output tensor, so the result is one flat
functional model in which every backbone layer can be found by name and a sub-model can start at
any block boundary (see `pipeline.training.features`).

The head is: global pooling (none when the backbone already gives a vector), dropout on the pooled
features, then any number of hidden Dense layers (each with its activation, optional
BatchNormalization before or after it, and dropout), then a float32 softmax. Every Dense kernel gets
the configured L1/L2 penalty and max-norm constraint. Only Keras' built-in layers are used, so an
exported model reloads in safe mode without this repository.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Integral, Real

import keras

from pipeline.backbones.base import Backbone
from pipeline.model.activations import (
    ACTIVATION_NAMES,
    BATCH_NORM_PLACES,
    combination_problems,
    resolve_dropout_type,
    resolve_initializer,
)
from pipeline.model.regularizers import kernel_constraint, kernel_regularizer

HEAD_POOL = "head_pool"
HEAD_DROPOUT = "head_dropout"
HEAD_PREDICTIONS = "head_predictions"
POOLINGS = ("avg", "max")


@dataclass(frozen=True)
class Classifier:
    """Backbone plus new head.

    Attributes:
        model: Preprocessed image -> class probabilities.
        backbone: The backbone whose layers `model` holds.
        pooled: The pooled feature vector: the last tensor before any trainable head weight.
    """

    model: keras.Model
    backbone: Backbone
    pooled: keras.KerasTensor


def _activation(
    tensor: keras.KerasTensor, name: str, *, index: int, units: int, negative_slope: float, maxout_pieces: int
) -> keras.KerasTensor:
    """Applies the hidden layer's activation (for maxout, the max over each unit's pieces)."""
    layer_name = f"head_activation_{index}"
    if name == "maxout":
        # Keras 3 has no Maxout layer. Built from Keras' own layers rather than a custom class or a
        # Lambda, so that saved models load in safe mode anywhere: unit j is the max of outputs
        # j*pieces .. (j+1)*pieces-1 of the Dense before it.
        grouped = keras.layers.Reshape((units, maxout_pieces), name=f"head_maxout_reshape_{index}")(tensor)
        return keras.layers.GlobalMaxPooling1D(data_format="channels_first", name=layer_name)(grouped)
    if name == "leaky_relu":
        return keras.layers.LeakyReLU(negative_slope=negative_slope, name=layer_name)(tensor)
    if name == "prelu":
        return keras.layers.PReLU(name=layer_name)(tensor)
    if name == "elu":
        return keras.layers.ELU(name=layer_name)(tensor)
    return keras.layers.Activation(name, name=layer_name)(tensor)


def _initializer(name: str, *, seed: int) -> keras.initializers.Initializer:
    """Keras' initialiser `name`, seeded when it is random."""
    # The constant initialisers take no seed; every random one is seeded so runs repeat exactly.
    if name in ("zeros", "ones"):
        return keras.initializers.get(name)
    return keras.initializers.get({"class_name": name, "config": {"seed": seed}})


def _dropout(rate: float, *, kind: str, seed: int, name: str) -> keras.layers.Layer:
    """Keras' Dropout, or AlphaDropout when `kind` is "alpha"."""
    if kind == "alpha":
        return keras.layers.AlphaDropout(rate, seed=seed, name=name)
    return keras.layers.Dropout(rate, seed=seed, name=name)


def _check_numbers(
    *,
    num_classes: int,
    dropout: float,
    hidden_units: Sequence[int],
    hidden_rates: Sequence[float],
    negative_slope: float,
    maxout_pieces: int,
) -> None:
    """Raises ValueError naming the first option out of its range (the same ranges as `pipeline.params`)."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, Integral) or num_classes < 2:
        raise ValueError(f"num_classes is {num_classes!r}; allowed: an integer >= 2")
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout is {dropout!r}; allowed: 0 <= dropout < 1")
    for units in hidden_units:
        if isinstance(units, bool) or not isinstance(units, Integral) or units < 1:
            raise ValueError(f"hidden_units holds {units!r}; allowed: integers >= 1")
    for rate in hidden_rates:
        if not 0 <= rate < 1:
            raise ValueError(f"hidden_dropout holds {rate!r}; allowed: 0 <= rate < 1")
    if not 0 < negative_slope < 1:
        raise ValueError(f"negative_slope is {negative_slope!r}; allowed: 0 < negative_slope < 1")
    if isinstance(maxout_pieces, bool) or not isinstance(maxout_pieces, Integral) or maxout_pieces < 2:
        raise ValueError(f"maxout_pieces is {maxout_pieces!r}; allowed: an integer >= 2")


def attach_head(
    backbone: Backbone,
    *,
    num_classes: int,
    seed: int,
    pooling: str = "avg",
    dropout: float = 0.0,
    hidden_units: Sequence[int] = (),
    activation: str = "relu",
    negative_slope: float = 0.3,
    maxout_pieces: int = 2,
    initializer: str = "auto",
    batch_norm: str = "none",
    hidden_dropout: float | Sequence[float] = 0.0,
    dropout_type: str = "auto",
    l1: float = 0.0,
    l2: float = 0.0,
    max_norm: float | None = None,
    max_norm_axis: int = 0,
) -> Classifier:
    """Puts pooling, dropout, the hidden layers and a softmax over the dataset's classes on the backbone.

    Args:
        backbone: The pretrained feature extractor.
        num_classes: Number of classes of the new task.
        seed: Seed of the initialisers and dropout masks (each layer gets its own offset).
        pooling: "avg" or "max" global pooling of the last feature map; a backbone ending in a feature
            vector is not pooled.
        dropout: Dropout rate on the pooled features, the head's input (0 disables it).
        hidden_units: Units of each hidden Dense layer; empty for a linear head.
        activation: One of `pipeline.model.activations.ACTIVATION_NAMES`.
        negative_slope: Slope of leaky_relu for negative inputs.
        maxout_pieces: Linear pieces of each maxout unit.
        initializer: "auto" (matched to the activation) or a Keras initialiser name, for hidden kernels;
            the output layer is Glorot-uniform, the match of its softmax.
        batch_norm: "none", or BatchNormalization "before" (the Dense then has no bias: BN's beta
            replaces it) or "after" each hidden activation.
        hidden_dropout: Dropout after each hidden layer: one rate for all, or one per layer.
        dropout_type: "auto" (AlphaDropout for selu), "standard" or "alpha"; for every dropout of the head.
        l1: L1 penalty factor of every Dense kernel of the head.
        l2: L2 penalty factor of every Dense kernel of the head.
        max_norm: Max-norm bound of every Dense kernel of the head, or None.
        max_norm_axis: The kernel axis the norm is taken over (0: each unit's incoming weights).

    Returns:
        The classifier.

    Raises:
        ValueError: An unknown name, a number out of its range, a rate list of the wrong length, or a
            pairing the course warns against (see `pipeline.model.activations.combination_problems`).
    """
    if pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {pooling!r}; allowed: {', '.join(POOLINGS)}")
    if activation not in ACTIVATION_NAMES:
        raise ValueError(f"unknown activation {activation!r}; allowed: {', '.join(ACTIVATION_NAMES)}")
    if batch_norm not in BATCH_NORM_PLACES:
        raise ValueError(f"unknown batch_norm {batch_norm!r}; allowed: {', '.join(BATCH_NORM_PLACES)}")
    if isinstance(hidden_dropout, Real):
        hidden_rates = [float(hidden_dropout)] * len(hidden_units)
    else:
        hidden_rates = list(hidden_dropout)
    if len(hidden_rates) != len(hidden_units):
        raise ValueError(
            f"hidden_dropout lists {len(hidden_rates)} rates for {len(hidden_units)} hidden layers; "
            "give one rate per layer, or a single number for all"
        )
    _check_numbers(
        num_classes=num_classes,
        dropout=dropout,
        hidden_units=hidden_units,
        hidden_rates=hidden_rates,
        negative_slope=negative_slope,
        maxout_pieces=maxout_pieces,
    )
    problems = combination_problems(
        activation=activation, batch_norm=batch_norm, dropout_type=dropout_type, dropout_rates=[dropout, *hidden_rates]
    )
    if problems:
        raise ValueError("; ".join(problems))
    dropout_kind = resolve_dropout_type(activation, dropout_type)
    hidden_initializer = resolve_initializer(initializer, activation=activation)
    regularizer = kernel_regularizer(l1=l1, l2=l2)
    constraint = kernel_constraint(max_norm=max_norm, axis=max_norm_axis)

    features = backbone.model.output
    if len(features.shape) == 2:
        # A backbone that already ends in a feature vector (a TF Hub feature-vector SavedModel, a .keras
        # model cut after its own pooling) has nothing left to pool; the layer keeps its name so the
        # feature cache and the layer map find the head's input where they always do.
        pooled = keras.layers.Identity(name=HEAD_POOL)(features)
    elif len(features.shape) == 4:
        pooling_layers = {"avg": keras.layers.GlobalAveragePooling2D, "max": keras.layers.GlobalMaxPooling2D}
        pooled = pooling_layers[pooling](name=HEAD_POOL)(features)
    else:
        raise ValueError(
            f"{backbone.name} outputs features of shape {tuple(features.shape)}; the head takes a feature map "
            "(batch, height, width, channels) or a feature vector (batch, features)"
        )
    tensor = _dropout(dropout, kind=dropout_kind, seed=seed, name=HEAD_DROPOUT)(pooled)
    # Hidden layer i is seeded with seed + i so that layers of one shape still draw different weights; the
    # output layer keeps `seed`, so a head without hidden layers starts exactly as it always has.
    for index, (units, rate) in enumerate(zip(hidden_units, hidden_rates, strict=True), start=1):
        units = int(units)
        width = units * maxout_pieces if activation == "maxout" else units
        tensor = keras.layers.Dense(
            width,
            use_bias=batch_norm != "before",
            kernel_initializer=_initializer(hidden_initializer, seed=seed + index),
            kernel_regularizer=regularizer,
            kernel_constraint=constraint,
            name=f"head_dense_{index}",
        )(tensor)
        if batch_norm == "before":
            tensor = keras.layers.BatchNormalization(name=f"head_bn_{index}")(tensor)
        tensor = _activation(
            tensor, activation, index=index, units=units, negative_slope=negative_slope, maxout_pieces=maxout_pieces
        )
        if batch_norm == "after":
            tensor = keras.layers.BatchNormalization(name=f"head_bn_{index}")(tensor)
        if rate > 0:
            tensor = _dropout(rate, kind=dropout_kind, seed=seed + index, name=f"head_dropout_{index}")(tensor)
    # float32 output even under mixed precision: a float16 softmax loses small probabilities. Glorot-uniform
    # whatever the hidden activation: the logits are linear and feed a sigmoid-like softmax, the case Glorot's
    # variance argument was made for.
    probabilities = keras.layers.Dense(
        num_classes,
        activation="softmax",
        kernel_initializer=keras.initializers.GlorotUniform(seed=seed),
        kernel_regularizer=regularizer,
        kernel_constraint=constraint,
        dtype="float32",
        name=HEAD_PREDICTIONS,
    )(tensor)
    model = keras.Model(backbone.model.input, probabilities, name=f"{backbone.name}_classifier")
    return Classifier(model=model, backbone=backbone, pooled=pooled)
