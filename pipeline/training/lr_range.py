"""The LR range test of the frozen phase: the very model, data and loss that `fine_tune`'s first phase trains.

Why here and not in the stage: the suggestion is only worth taking if it was found on what the frozen
phase really fits (the new head on the cached frozen features, with the run's optimiser, loss and
augmentation), so the sweep is built from the same `PhaseDataFactory` and `InputSettings` as
`pipeline.training.recipe.fine_tune`. The sweep itself is `pipeline.optim.lr_finder.lr_range_test`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from pipeline.model.freezing import set_trainable_blocks
from pipeline.optim.lr_finder import LRFindReport, lr_range_test
from pipeline.optim.optimizers import make_optimizer
from pipeline.training.features import ImageSplit, InputSettings, PhaseDataFactory
from pipeline.training.losses import classification_loss

if TYPE_CHECKING:
    from pipeline.model.head import Classifier
    from pipeline.params.optimizer import OptimizerParams
    from pipeline.params.runtime import LRFindParams


def find_learning_rate(
    classifier: Classifier,
    train: ImageSplit,
    *,
    optimizer: OptimizerParams,
    inputs: InputSettings,
    settings: LRFindParams,
    jit_compile: bool | str = "auto",
) -> LRFindReport:
    """Sweeps the frozen phase's learning rate over a sample of the training images.

    Args:
        classifier: The backbone with its new head, as the train stage builds it.
        train: The training split; `settings.images` of its images are drawn (seeded by `inputs.seed`).
        optimizer: The frozen phase's optimiser settings.
        inputs: How images are fed (the same as the frozen phase's).
        settings: The validated `lr_find` section: LR range, steps, smoothing, images, rule.
        jit_compile: XLA compilation of the sweep's step.

    Returns:
        The report the lr_find stage writes (`reports/lr_find.json`).

    Raises:
        ValueError: The loss diverged too early for a suggestion (see `lr_range_test`).
    """
    chosen = np.random.default_rng(inputs.seed).permutation(len(train.labels))[: settings.images]
    sample = ImageSplit(train.images[chosen], train.labels[chosen])
    set_trainable_blocks(classifier.model, classifier.backbone.blocks_top_down, trainable_blocks=0)
    # The sweep never validates; one image stands in for the validation split the factory wants.
    data = PhaseDataFactory(
        classifier,
        train=sample,
        val=ImageSplit(sample.images[:1], sample.labels[:1]),
        inputs=inputs,
        deepest_trainable_blocks=0,
    ).for_phase(0)
    result = lr_range_test(
        data.model,
        data.train(),
        make_optimizer=lambda learning_rate: make_optimizer(optimizer, learning_rate=learning_rate),
        loss=classification_loss(label_smoothing=inputs.label_smoothing),
        min_lr=settings.min_lr,
        max_lr=settings.max_lr,
        steps=settings.steps,
        smoothing=settings.smoothing,
        jit_compile=jit_compile,
    )
    return LRFindReport(
        enabled=True, rule=settings.rule, images=len(sample.labels), cached_features=data.cached, result=result
    )
