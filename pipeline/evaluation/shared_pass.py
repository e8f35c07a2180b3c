"""One pass over the test images for the fine-tuned model and the linear probe: the blocks they share, once.

Why: the linear probe (`pipeline.evaluation.baselines`) needs the pretrained backbone's pooled features of
every test image, which is a second forward pass as long as the model's own evaluation, most of the
baselines' cost. Fine-tuning from the top leaves the lower blocks bit-identical to the pretrained ones (they
were frozen), so those blocks need computing once: their output feeds the fine-tuned upper blocks and head
(the probabilities) and the pretrained upper blocks and pooling (the probe's features). The split is at a
block boundary, a single tensor (`pipeline.backbones.base`), as the frozen-feature cache cuts it in
training. Which blocks are shared is read from the weights, not assumed from the params: a layer whose
weights differ in any way is not shared.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import keras
import numpy as np

from pipeline.data.datasets import image_dataset
from pipeline.evaluation.baselines import frozen_feature_model

if TYPE_CHECKING:
    from pipeline.backbones.base import Backbone


def _inner_classifier(model: keras.Model) -> tuple[keras.layers.Layer, keras.Model] | None:
    """The exported model's preprocessing layer and the classifier it wraps (`pipeline.model.export`)."""
    inner = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    others = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer | keras.Model)]
    if len(inner) != 1 or len(others) != 1:
        return None
    return others[0], inner[0]


def _same_weights(first: keras.layers.Layer, second: keras.layers.Layer) -> bool:
    weights, others = first.get_weights(), second.get_weights()
    return len(weights) == len(others) and all(np.array_equal(a, b) for a, b in zip(weights, others, strict=True))


def shared_cut(classifier: keras.Model, backbone: Backbone) -> str | None:
    """The highest layer below which `classifier` still has exactly the pretrained `backbone`'s weights.

    Args:
        classifier: The fine-tuned classifier (preprocessed image -> probabilities), its layers named as the
            backbone's.
        backbone: The pretrained backbone, as `pipeline.backbones.registry.load_backbone` builds it.

    Returns:
        The name of the last layer of the highest block group whose weights, and those of every group below
        it, are unchanged; None when even the lowest group changed, or a layer cannot be matched by name.
    """
    groups = backbone.blocks_top_down
    group_of = {name: index for index, group in enumerate(groups) for name in group.layer_names}
    changed = 0  # groups from the top with a changed layer
    for layer in backbone.model.layers:
        if not layer.weights:
            continue
        try:
            tuned = classifier.get_layer(layer.name)
        except ValueError:
            return None
        if not _same_weights(layer, tuned):
            if layer.name not in group_of:  # a changed layer outside every group: nothing can be shared safely
                return None
            changed = max(changed, group_of[layer.name] + 1)
    return groups[changed].layer_names[-1] if changed < len(groups) else None


def model_and_probe_pass(
    model: keras.Model,
    backbone: Backbone,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    pooling: str,
    image_size: int,
    batch_size: int,
) -> tuple[np.ndarray, np.ndarray | None, str | None]:
    """The model's class probabilities and, when blocks are shared, the probe's pooled test features.

    Args:
        model: The exported end-to-end model (0..255 RGB -> probabilities).
        backbone: The pretrained backbone the model was fine-tuned from.
        images: uint8 test images.
        labels: Their labels (the dataset carries them; unused here).
        pooling: The head's pooling (`head.pooling`): the probe's features are pooled the same way.
        image_size: The model's square input size.
        batch_size: Images per batch.

    Returns:
        (probabilities, pretrained pooled features or None, the layer the pass was split at or None); with
        None the features are not computed, and the probe must run the backbone itself.
    """
    dataset = image_dataset(images, labels, image_size=image_size, batch_size=batch_size)
    parts = _inner_classifier(model)
    cut = shared_cut(parts[1], backbone) if parts is not None else None
    if parts is None or cut is None:
        return model.predict(dataset, verbose=0), None, None
    preprocessing, classifier = parts
    features = frozen_feature_model(backbone, pooling=pooling)
    shared = keras.Model(classifier.input, classifier.get_layer(cut).output)
    tuned_top = keras.Model(classifier.get_layer(cut).output, classifier.outputs[0])
    pretrained_top = keras.Model(features.get_layer(cut).output, features.outputs[0])
    pixels = keras.Input(shape=model.input.shape[1:], dtype=model.input.dtype)
    below = shared(preprocessing(pixels))
    both = keras.Model(pixels, [tuned_top(below), pretrained_top(below)])
    probabilities, pooled = both.predict(dataset, verbose=0)
    return probabilities, np.asarray(pooled, dtype=np.float32), cut
