"""The new classification head that replaces the backbone's ImageNet classifier.

Why: transfer learning keeps the pretrained features and learns a fresh classifier for the new
classes. The head is attached to the backbone's own output tensor, so the result is one flat
functional model in which every backbone layer can be found by name and a sub-model can start at
any block boundary (see `pipeline.features`).
"""

from __future__ import annotations

from dataclasses import dataclass

import keras

from pipeline.backbones.registry import Backbone

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


def attach_head(backbone: Backbone, *, num_classes: int, pooling: str, dropout: float, seed: int) -> Classifier:
    """Puts pooling, dropout and a softmax over the dataset's classes on top of the backbone.

    Args:
        backbone: The pretrained feature extractor.
        num_classes: Number of classes of the new task.
        pooling: "avg" or "max" global pooling of the last feature map.
        dropout: Dropout rate before the classifier (0 disables it).
        seed: Seed of the classifier's initialisation and of the dropout mask.

    Returns:
        The classifier.

    Raises:
        ValueError: `pooling` is not "avg" or "max".
    """
    pooling_layers = {"avg": keras.layers.GlobalAveragePooling2D, "max": keras.layers.GlobalMaxPooling2D}
    if pooling not in pooling_layers:
        raise ValueError(f"unknown pooling {pooling!r}; allowed: {', '.join(pooling_layers)}")
    pooled = pooling_layers[pooling](name=HEAD_POOL)(backbone.model.output)
    tensor = keras.layers.Dropout(dropout, seed=seed, name=HEAD_DROPOUT)(pooled)
    # float32 output even under mixed precision: a float16 softmax loses small probabilities.
    probabilities = keras.layers.Dense(
        num_classes,
        activation="softmax",
        kernel_initializer=keras.initializers.GlorotUniform(seed=seed),
        dtype="float32",
        name=HEAD_PREDICTIONS,
    )(tensor)
    model = keras.Model(backbone.model.input, probabilities, name=f"{backbone.name}_classifier")
    return Classifier(model=model, backbone=backbone, pooled=pooled)
