"""The LR range test of the frozen phase: the very model, data and loss that `fine_tune`'s first phase trains.

Why here and not in the stage: the suggestion is only worth taking if it was found on what the frozen
phase really fits (the new head on the cached frozen features, with the run's optimiser, loss and
augmentation), so the sweep is built from the same `PhaseDataFactory` and `InputSettings` as
`pipeline.training.recipe.fine_tune`. The sweep itself is `pipeline.optim.lr_finder.lr_range_test`.

With the activation store on, the sweep computes the frozen activations `train` needs (every training and
validation image, at the train plan's deepest cut) and stores them, so that `train` reads them instead of
computing them again; the sweep's sample is then taken from those rows.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np

from pipeline.model.freezing import set_trainable_blocks
from pipeline.optim.lr_finder import LRFindReport, lr_range_test
from pipeline.optim.optimizers import make_optimizer
from pipeline.training.features import ImageSplit, InputSettings, PhaseDataFactory
from pipeline.training.losses import classification_loss
from pipeline.training.recipe import unfreeze_depth

if TYPE_CHECKING:
    from pipeline.model.head import Classifier
    from pipeline.params.optimizer import OptimizerParams
    from pipeline.params.runtime import LRFindParams
    from pipeline.params.train import TrainParams


def deepest_trainable_blocks(train: TrainParams, *, block_count: int, train_examples: int) -> int:
    """The most blocks any phase of the `train` section trains: the cut whose activations `train` computes.

    Args:
        train: The validated `train` section.
        block_count: Blocks of the backbone.
        train_examples: Images of the training split (what `blocks: auto` depends on).

    Returns:
        The largest `trainable_blocks` of `pipeline.training.recipe.plan_phases`' phases (0 for the frozen one).
    """
    depths = (
        unfreeze_depth(
            stage.blocks, depth=train.unfreeze_depth, block_count=block_count, train_examples=train_examples
        )[0]
        for stage in train.unfreeze
    )
    return max(depths, default=0)


def find_learning_rate(
    classifier: Classifier,
    train: ImageSplit,
    *,
    optimizer: OptimizerParams,
    inputs: InputSettings,
    settings: LRFindParams,
    jit_compile: bool | str = "auto",
    val: ImageSplit | None = None,
    deepest_trainable_blocks: int = 0,
    verbose: int = 0,
) -> LRFindReport:
    """Sweeps the frozen phase's learning rate over a sample of the training images.

    Args:
        classifier: The backbone with its new head, as the train stage builds it.
        train: The training split; `settings.images` of its images are drawn (seeded by `inputs.seed`).
        optimizer: The frozen phase's optimiser settings.
        inputs: How images are fed (the same as the frozen phase's).
        settings: The validated `lr_find` section: LR range, steps, smoothing, images, rule.
        jit_compile: XLA compilation of the sweep's step.
        val: The validation split, for the activation store (`inputs.activation_store`): given, the frozen
            activations of both splits at `deepest_trainable_blocks`' cut are read from the store or computed
            into it, for `train` to read, and the sample's are taken from them. None: only the sample's
            frozen features are computed, and nothing is stored.
        deepest_trainable_blocks: The train plan's deepest phase (`deepest_trainable_blocks(...)`).
        verbose: Above 0, each pass over images and where the stored activations came from are printed.

    Returns:
        The report the lr_find stage writes (`reports/lr_find.json`).

    Raises:
        ValueError: The loss diverged too early for a suggestion (see `lr_range_test`).
    """
    chosen = np.random.default_rng(inputs.seed).permutation(len(train.labels))[: settings.images]
    sample = ImageSplit(train.images[chosen], train.labels[chosen])
    set_trainable_blocks(classifier.model, classifier.backbone.blocks_top_down, trainable_blocks=0)
    base, deepest = None, 0
    if val is not None and inputs.activation_store is not None:
        stored = PhaseDataFactory(
            classifier,
            train=train,
            val=val,
            inputs=inputs,
            deepest_trainable_blocks=deepest_trainable_blocks,
            verbose=verbose,
        )
        if stored.uses_store:
            activations = stored.base_activations()
            base = {"train": [view[chosen] for view in activations["train"]], "val": [activations["val"][0][:1]]}
            deepest = deepest_trainable_blocks
            if verbose:
                print(stored.cache_note, flush=True)
    # The sweep never validates; one image stands in for the validation split the factory wants.
    data = PhaseDataFactory(
        classifier,
        train=sample,
        val=ImageSplit(sample.images[:1], sample.labels[:1]),
        inputs=dataclasses.replace(inputs, activation_store=None),
        deepest_trainable_blocks=deepest,
        base_activations=base,
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
