"""The fine-tuning recipe: a new head on a frozen backbone, then unfreezing from the top.

Read `fine_tune` top to bottom: plan the phases, then for each phase set what trains, get its data,
compile a fresh optimiser at its learning rate, and fit on the global epoch axis. The mechanics live
elsewhere: `pipeline.freezing` (what trains), `pipeline.features` (frozen activations computed once),
`pipeline.optimizers`, `pipeline.callbacks` (one history for all phases).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

import keras

from pipeline.callbacks import HistoryRecorder, PhaseRecord, TrainingHistory
from pipeline.features import ImageSplit, PhaseDataFactory
from pipeline.freezing import set_trainable_blocks
from pipeline.head import Classifier
from pipeline.optimizers import make_optimizer

LOSS = "sparse_categorical_crossentropy"


@dataclass(frozen=True)
class Phase:
    """One `fit`: how many blocks from the top train, for how long, at which learning rate."""

    name: str
    trainable_blocks: int
    epochs: int
    learning_rate: float


@dataclass(frozen=True)
class UnfreezeStage:
    """One step of progressive unfreezing, as configured."""

    blocks: int
    epochs: int
    lr_factor: float


def plan_phases(*, frozen_epochs: int, unfreeze: Sequence[UnfreezeStage], base_learning_rate: float) -> list[Phase]:
    """The frozen phase at the base LR, then each unfreeze stage at its fraction of it."""
    phases = [Phase("frozen", 0, frozen_epochs, base_learning_rate)]
    phases += [
        Phase(f"unfreeze_top_{stage.blocks}", stage.blocks, stage.epochs, base_learning_rate * stage.lr_factor)
        for stage in unfreeze
    ]
    return phases


def fine_tune(
    classifier: Classifier,
    *,
    train: ImageSplit,
    val: ImageSplit,
    phases: Sequence[Phase],
    optimizer: str,
    batch_size: int,
    image_size: int,
    seed: int,
    feature_cache_bytes: int,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    verbose: int = 2,
) -> TrainingHistory:
    """Fine-tunes `classifier` in place, phase after phase.

    Args:
        classifier: Backbone with its new head.
        train: Training images and labels.
        val: Validation images and labels.
        phases: The plan, usually from `plan_phases`.
        optimizer: Registered optimiser name; a fresh one is built for every phase.
        batch_size: Images per batch.
        image_size: Square input size.
        seed: Seed of the shuffles.
        feature_cache_bytes: Memory budget for cached frozen activations; 0 always trains on images.
        callbacks: Extra callbacks (tracking); they receive `lr` and `phase` in their logs.
        verbose: Keras' `fit` verbosity.

    Returns:
        Every epoch of every phase on one axis, with the phase boundaries.
    """
    history = TrainingHistory()
    recorder = HistoryRecorder(history)
    data = PhaseDataFactory(
        classifier,
        train=train,
        val=val,
        deepest_trainable_blocks=max(phase.trainable_blocks for phase in phases),
        preprocessing=classifier.backbone.make_preprocessing(),
        image_size=image_size,
        batch_size=batch_size,
        seed=seed,
        cache_limit_bytes=feature_cache_bytes,
    )
    for index, phase in enumerate(phases):
        started = time.perf_counter()
        set_trainable_blocks(
            classifier.model, classifier.backbone.blocks_top_down, trainable_blocks=phase.trainable_blocks
        )
        phase_data = data.for_phase(phase.trainable_blocks)
        phase_data.model.compile(
            optimizer=make_optimizer(optimizer, learning_rate=phase.learning_rate),
            loss=LOSS,
            metrics=["accuracy"],
        )
        first_epoch = history.epochs_done
        record = PhaseRecord(
            index=index,
            name=phase.name,
            trainable_blocks=phase.trainable_blocks,
            learning_rate=phase.learning_rate,
            first_epoch=first_epoch,
            end_epoch=first_epoch + phase.epochs,
            cached_features=phase_data.cached,
        )
        recorder.begin_phase(record)
        phase_data.model.fit(
            phase_data.train,
            validation_data=phase_data.val,
            initial_epoch=first_epoch,
            epochs=record.end_epoch,
            callbacks=[recorder, *callbacks],
            shuffle=False,  # the datasets reshuffle themselves, with the run's seed
            verbose=verbose,
        )
        # A callback may stop a phase early: record where it really ended.
        history.phases.append(replace(record, end_epoch=history.epochs_done, seconds=time.perf_counter() - started))
    return history
