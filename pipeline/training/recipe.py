"""The fine-tuning recipe: a new head on a frozen backbone, then unfreezing from the top.

Read `fine_tune` top to bottom: for each planned phase, set what trains, get its data, compile a
fresh optimiser with the phase's schedule and layer-wise learning rates, and fit on the global epoch
axis. `plan_phases` turns the `train` section into that list of phases, resolving each stage's
inherited settings. The mechanics live elsewhere: `pipeline.model.freezing` (what trains, BatchNorm
policy), `pipeline.training.features` (frozen activations computed once), `pipeline.optim.optimizers`,
`pipeline.optim.schedules`, `pipeline.optim.layerwise` (discriminative learning rates), `pipeline.training.losses`,
`pipeline.training.callbacks` (one history for all phases, early stopping, the divergence guard).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import keras

from pipeline.model.freezing import layer_map, restore_layer_classes, set_trainable_blocks
from pipeline.model.head import Classifier
from pipeline.optim.layerwise import block_multipliers, variable_multipliers
from pipeline.optim.optimizers import make_optimizer
from pipeline.optim.schedules import make_schedule
from pipeline.training.callbacks import DivergenceGuard, HistoryRecorder, early_stopping
from pipeline.training.features import ImageSplit, InputSettings, PhaseDataFactory
from pipeline.training.history import PhaseRecord, TrainingHistory
from pipeline.training.losses import classification_loss

if TYPE_CHECKING:
    from pipeline.params.optimizer import OptimizerParams
    from pipeline.params.schedule import ScheduleParams
    from pipeline.params.train import EarlyStoppingParams, TrainParams
    from pipeline.training.diagnostics import TrainingDiagnostics


@dataclass(frozen=True)
class Phase:
    """One `fit`: what trains, for how long, and how it is optimised.

    Attributes:
        name: `frozen`, `unfreeze_top_<k>` or `unfreeze_all`.
        trainable_blocks: Blocks from the top that train (0: only the head).
        epochs: Epochs planned (early stopping may end the phase sooner).
        learning_rate: The phase's LR, lr0 of its schedule (the head's LR under discriminative LR).
        optimizer: The optimiser's validated settings (name and options).
        schedule: The schedule's validated settings (name and options).
        bn_policy: BatchNorm policy of the unfrozen blocks.
        lr_decay_per_block: Each lower unfrozen block trains at the LR of the block above / this.
        early_stopping: Early stopping settings, or None.
    """

    name: str
    trainable_blocks: int
    epochs: int
    learning_rate: float
    optimizer: OptimizerParams
    schedule: ScheduleParams
    bn_policy: str = "frozen"
    lr_decay_per_block: float = 1.0
    early_stopping: EarlyStoppingParams | None = None


def _momentum_for_cycling(optimizer: OptimizerParams, schedule: ScheduleParams) -> OptimizerParams:
    """1cycle cycles momentum; an SGD or RMSprop without momentum has nothing to cycle, so give it one.

    Keras builds momentum slots only when momentum > 0, so the optimiser starts at the cycle's top.
    """
    cycles = schedule.name == "onecycle" and schedule.cycle_momentum
    if cycles and optimizer.momentum_term == "momentum" and optimizer.momentum == 0.0:
        return optimizer.model_copy(update={"momentum": schedule.max_momentum})
    return optimizer


def plan_phases(train: TrainParams, *, base_learning_rate: float, block_count: int) -> list[Phase]:
    """The frozen phase at the base LR, then each unfreeze stage at its fraction of it.

    Args:
        train: The validated `train` section; a stage's unset optimiser, schedule, BatchNorm policy,
            discriminative LR and early stopping are the section's.
        base_learning_rate: LR of the frozen phase (a number, or the LR range test's suggestion).
        block_count: Number of blocks of the backbone (what `all` means).

    Returns:
        The phases in order.
    """
    phases = [
        Phase(
            name="frozen",
            trainable_blocks=0,
            epochs=train.frozen_epochs,
            learning_rate=base_learning_rate,
            optimizer=_momentum_for_cycling(train.optimizer, train.schedule),
            schedule=train.schedule,
            bn_policy=train.bn_policy,
            lr_decay_per_block=train.lr_decay_per_block,
            early_stopping=train.early_stopping,
        )
    ]
    for stage in train.unfreeze:
        blocks = block_count if stage.blocks == "all" else stage.blocks
        schedule = stage.schedule or train.schedule
        phases.append(
            Phase(
                name="unfreeze_all" if stage.blocks == "all" else f"unfreeze_top_{blocks}",
                trainable_blocks=blocks,
                epochs=stage.epochs,
                learning_rate=base_learning_rate * stage.lr_factor,
                optimizer=_momentum_for_cycling(stage.optimizer or train.optimizer, schedule),
                schedule=schedule,
                bn_policy=stage.bn_policy or train.bn_policy,
                lr_decay_per_block=stage.lr_decay_per_block or train.lr_decay_per_block,
                early_stopping=stage.early_stopping or train.early_stopping,
            )
        )
    return phases


def fine_tune(
    classifier: Classifier,
    *,
    train: ImageSplit,
    val: ImageSplit,
    phases: Sequence[Phase],
    inputs: InputSettings,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    verbose: int = 2,
    jit_compile: bool | str = "auto",
    diagnostics: TrainingDiagnostics | None = None,
) -> TrainingHistory:
    """Fine-tunes `classifier` in place, phase after phase.

    Args:
        classifier: Backbone with its new head.
        train: Training images and labels.
        val: Validation images and labels.
        phases: The plan, usually from `plan_phases`.
        inputs: How the images are fed (`InputSettings.from_params(config.train, ...)`): size, batches,
            seed, augmentation, label smoothing of the cross-entropy, and the frozen-feature cache's budget.
        callbacks: Extra callbacks (tracking); they receive `lr` in their logs, and those with a
            `begin_phase(record)` method are told each phase before its first epoch.
        verbose: Keras' `fit` verbosity.
        jit_compile: XLA compilation of each phase's training step: "auto" (Keras decides), True or False.
        diagnostics: The course's diagnostics (`pipeline.training.diagnostics`): block gradient norms
            accumulated by each phase's optimiser, and their callbacks first in each phase's list, so
            their metrics reach the history and the run; None for none.

    Returns:
        Every epoch of every phase on one axis, the phase boundaries and the trainable-layer map.

    Raises:
        TrainingDivergedError: An epoch's loss was NaN or infinite, or far above that of guessing
            (`pipeline.training.divergence`); training stops at that epoch, and no model should be kept.
    """
    history = TrainingHistory()
    recorder = HistoryRecorder(history)
    guard = DivergenceGuard(num_classes=classifier.model.output_shape[-1])
    blocks = classifier.backbone.blocks_top_down
    data = PhaseDataFactory(
        classifier,
        train=train,
        val=val,
        inputs=inputs,
        deepest_trainable_blocks=max(phase.trainable_blocks for phase in phases),
        verbose=verbose,
    )
    for index, phase in enumerate(phases):
        started = time.perf_counter()
        set_trainable_blocks(
            classifier.model, blocks, trainable_blocks=phase.trainable_blocks, bn_policy=phase.bn_policy
        )
        phase_data = data.for_phase(phase.trainable_blocks)
        first_epoch = history.epochs_done
        schedule = make_schedule(
            phase.schedule,
            learning_rate=phase.learning_rate,
            steps_per_epoch=phase_data.steps_per_epoch,
            epochs=phase.epochs,
            first_epoch=first_epoch,
            momentum_term=phase.optimizer.momentum_term,
        )
        layer_multipliers = block_multipliers(
            [group.layer_names for group in blocks],
            trainable_blocks=phase.trainable_blocks,
            decay_per_block=phase.lr_decay_per_block,
        )
        phase_data.model.compile(
            optimizer=make_optimizer(
                phase.optimizer,
                learning_rate=schedule.learning_rate,
                variable_multipliers=variable_multipliers(phase_data.model, layer_multipliers),
                variable_blocks=diagnostics.variable_blocks(phase_data.model, blocks) if diagnostics else None,
            ),
            loss=classification_loss(label_smoothing=inputs.label_smoothing),
            metrics=["accuracy"],
            jit_compile=jit_compile,
        )
        history.layers.extend(
            layer_map(classifier.model, blocks, phase=index, phase_name=phase.name, lr_multipliers=layer_multipliers)
        )
        record = PhaseRecord(
            index=index,
            name=phase.name,
            trainable_blocks=phase.trainable_blocks,
            learning_rate=phase.learning_rate,
            first_epoch=first_epoch,
            end_epoch=first_epoch + phase.epochs,
            cached_features=phase_data.cached,
            optimizer=phase.optimizer.name,
            schedule=phase.schedule.name,
            bn_policy=phase.bn_policy,
            lr_decay_per_block=phase.lr_decay_per_block,
            data_note=phase_data.note,
        )
        recorder.begin_phase(record)
        guard.begin_phase(record)
        for callback in callbacks:
            if callable(getattr(callback, "begin_phase", None)):
                callback.begin_phase(record)
        stopper = early_stopping(**phase.early_stopping.model_dump()) if phase.early_stopping is not None else None
        diagnosing = diagnostics.callbacks(phase_data.model, phase_data.val) if diagnostics else []
        phase_data.model.fit(
            phase_data.train,
            validation_data=phase_data.val,
            initial_epoch=first_epoch,
            epochs=record.end_epoch,
            # The recorder first, so it logs the LR this epoch used before a plateau callback lowers it; the
            # divergence guard last, so that the epoch that blew up is still recorded and logged to the run.
            # The diagnostics before both, so that their metrics are in the epoch's logs.
            callbacks=[*diagnosing, recorder, *schedule.callbacks, *([stopper] if stopper else []), *callbacks, guard],
            shuffle=False,  # the datasets reshuffle themselves, with the run's seed
            verbose=verbose,
        )
        # Early stopping may end a phase sooner and restore its best epoch: record both.
        history.phases.append(
            replace(
                record,
                end_epoch=history.epochs_done,
                best_epoch=stopper.best_epoch if stopper is not None and stopper.restore_best_weights else None,
                seconds=time.perf_counter() - started,
            )
        )
    # Leave no layer in a class swapped by freezing or a BN policy, so the saved model names only Keras classes.
    set_trainable_blocks(classifier.model, blocks, trainable_blocks=0)
    restore_layer_classes(classifier.model)
    return history
