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

from dataclasses import dataclass
from typing import TYPE_CHECKING

import keras

from pipeline.backbones.base import Backbone
from pipeline.model.activations import (
    resolve_dropout_type,
    resolve_initializer,
)
from pipeline.model.regularizers import kernel_constraint, kernel_regularizer

if TYPE_CHECKING:
    from pipeline.params.head import HeadParams

HEAD_POOL = "head_pool"
HEAD_DROPOUT = "head_dropout"
HEAD_PREDICTIONS = "head_predictions"


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


def pool_features(backbone: Backbone, pooling: str) -> keras.KerasTensor:
    """The backbone's output pooled to one feature vector per image, as the head's input.

    Why a function of its own: the evaluate stage's linear probe (`pipeline.evaluation.baselines`) reads
    the frozen backbone's features exactly where the head reads them.

    Args:
        backbone: The feature extractor.
        pooling: "avg" or "max" global pooling of a feature map; a backbone that ends in a feature
            vector is not pooled.

    Returns:
        The pooled tensor (batch, features), the output of the layer named `HEAD_POOL`.

    Raises:
        ValueError: The backbone's output is neither a feature map nor a feature vector.
    """
    features = backbone.model.output
    if len(features.shape) == 2:
        # A backbone that already ends in a feature vector (a TF Hub feature-vector SavedModel, a .keras
        # model cut after its own pooling) has nothing left to pool; the layer keeps its name so the
        # feature cache and the layer map find the head's input where they always do.
        return keras.layers.Identity(name=HEAD_POOL)(features)
    if len(features.shape) == 4:
        pooling_layers = {"avg": keras.layers.GlobalAveragePooling2D, "max": keras.layers.GlobalMaxPooling2D}
        return pooling_layers[pooling](name=HEAD_POOL)(features)
    raise ValueError(
        f"{backbone.name} outputs features of shape {tuple(features.shape)}; the head takes a feature map "
        "(batch, height, width, channels) or a feature vector (batch, features)"
    )


def build_head(backbone: Backbone, head: HeadParams, *, num_classes: int, seed: int) -> Classifier:
    """Puts pooling, dropout, the hidden layers and a softmax over the dataset's classes on the backbone.

    Every option comes from the validated `head` section (`pipeline.params.head`, where each is checked
    once, pairings the course warns against included): `pooling` ("avg" or "max" global pooling of the
    last feature map; a backbone ending in a feature vector is not pooled), `dropout` on the pooled
    features, one hidden Dense layer per `hidden_units` entry with its `activation` (`negative_slope`
    for leaky_relu, `maxout_pieces` for maxout), `initializer` ("auto": matched to the activation) for
    hidden kernels, `batch_norm` ("before": the Dense then has no bias, BN's beta replaces it; "after";
    "none"), `hidden_dropout` after each hidden layer, `dropout_type` ("auto": AlphaDropout for selu),
    and the L1/L2 penalty and max-norm constraint of every Dense kernel. The output layer is
    Glorot-uniform, the match of its softmax.

    Args:
        backbone: The pretrained feature extractor.
        head: The validated `head` section.
        num_classes: Number of classes of the new task, at least 2.
        seed: Seed of the initialisers and dropout masks (each layer gets its own offset).

    Returns:
        The classifier.

    Raises:
        ValueError: The backbone's output is neither a feature map nor a feature vector, or fewer than
            2 classes.
    """
    if num_classes < 2:
        raise ValueError(f"A classifier needs at least 2 classes. Received: num_classes={num_classes}")
    activation, hidden_units, batch_norm = head.activation, head.hidden_units, head.batch_norm
    negative_slope, maxout_pieces = head.negative_slope, head.maxout_pieces
    dropout, hidden_rates = head.dropout, head.hidden_dropout_rates()
    dropout_kind = resolve_dropout_type(activation, head.dropout_type)
    hidden_initializer = resolve_initializer(head.initializer, activation=activation)
    regularizer = kernel_regularizer(l1=head.kernel_regularizer.l1, l2=head.kernel_regularizer.l2)
    constraint = (
        None if head.max_norm is None else kernel_constraint(max_norm=head.max_norm.value, axis=head.max_norm.axis)
    )

    pooled = pool_features(backbone, head.pooling)
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
