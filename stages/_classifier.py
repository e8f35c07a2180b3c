"""What the train and lr_find stages build alike: the backbone with the head of params.yaml.

Why shared: the LR range test must probe the very model the train stage fine-tunes, so both stages
turn the `backbone` and `head` sections into a classifier through this one function; and the evaluate
stage's linear probe reads the features of the very pretrained backbone the train stage started from.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipeline.backbones.base import Backbone
    from pipeline.model.head import Classifier
    from pipeline.params import PipelineParams


def build_backbone(config: PipelineParams) -> Backbone:
    """Loads the configured backbone, pretrained (its weights converted once into `backbone.cache_dir`).

    Raises:
        BackboneError: A TF Hub handle or SavedModel cannot be loaded as configured (see `build_classifier`).
        KerasFileError: A .keras file cannot serve as configured.
    """
    from pipeline.backbones.registry import load_backbone

    settings = config.backbone
    return load_backbone(
        settings.name,
        image_size=settings.image_size,
        cache_dir=settings.cache_dir,
        weights=settings.weights,
        **settings.kind_options(),
    )


def build_classifier(config: PipelineParams, *, num_classes: int) -> Classifier:
    """Loads the configured backbone and puts the configured head on it, seeded by `train.seed`.

    Raises:
        BackboneError: A TF Hub handle or SavedModel cannot be loaded as configured (not cached offline, a
            missing endpoint, an input size it does not take); the stages report it in one line.
        KerasFileError: A .keras file cannot serve as configured (also one line).
    """
    from pipeline.model.head import build_head

    return build_head(build_backbone(config), config.head, num_classes=num_classes, seed=config.train.seed)
