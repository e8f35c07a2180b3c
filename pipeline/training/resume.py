"""Fitting one phase so that a killed run can go on where it stopped: checkpoints after every epoch (and every
`every_steps` optimiser steps), and the resume of a phase from one.

Why its own module: `pipeline.training.recipe.fine_tune` reads as the recipe (what trains, its data, its
optimiser, for how long); this module holds what a phase needs to survive a crash: which state to save
(`pipeline.training.checkpoint`), in which order the callbacks run so that the saved state is the epoch's
final one, and how a phase resumed mid-epoch is fitted: first the rest of that epoch (its running metrics
restored), then its remaining epochs, with early stopping and the plateau schedule given back their state
at the start of each `fit`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import keras
import numpy as np

from pipeline.training.checkpoint import (
    Checkpoint,
    CheckpointKey,
    StateRestorer,
    TrainingState,
    assign_all,
    callback_state,
    diagnostics_flags,
    layer_arrays,
    restore_callback_states,
    write_checkpoint,
)
from pipeline.training.distributed import fit_with_strategy_run, needs_custom_loop

if TYPE_CHECKING:
    from pipeline.training.diagnostics import TrainingDiagnostics
    from pipeline.training.features import PhaseData
    from pipeline.training.history import TrainingHistory


@dataclass(frozen=True)
class Checkpointing:
    """Where and how often a run checkpoints, and the checkpoint it resumes from.

    Attributes:
        path: The checkpoint file (kept outside the stage's DVC outputs, which DVC deletes before a rerun).
        key: What decides this training (`CheckpointKey`).
        run_id: The tracking run the epochs go to, saved so that a resume continues it.
        every_steps: Also checkpoint after every this many optimiser steps of a phase; None: at epoch ends only.
        resume: The checkpoint to go on from (its key already checked), or None to start afresh.
    """

    path: Path
    key: CheckpointKey
    run_id: str
    every_steps: int | None = None
    resume: Checkpoint | None = None

    @property
    def resumes(self) -> int:
        """How many times this training has been resumed, this start included."""
        return self.resume.state.resumes + 1 if self.resume is not None else 0


@dataclass
class PhaseProgress:
    """What a phase's checkpoints must know besides the model: where it stands and what it carries.

    Attributes:
        index: The phase's index.
        history: The run's history (its rows, finished phases and layer map).
        trained_layers: Layers whose weights training may have changed so far.
        started: `time.perf_counter()` at the phase's start, less the seconds earlier processes spent on it.
        diagnostics: The run's diagnostics (their flags are saved), or None.
        stateful: Callbacks whose state is saved, by role (`early_stopping`, `plateau`).
    """

    index: int
    history: TrainingHistory
    trained_layers: list[str]
    started: float
    diagnostics: TrainingDiagnostics | None
    stateful: dict[str, keras.callbacks.Callback]


class CheckpointWriter(keras.callbacks.Callback):
    """Writes a checkpoint at the end of every epoch, and every `every_steps` optimiser steps within one.

    It must come last in the callback list: the checkpoint of an epoch then holds the history row, the
    early-stopping and plateau decisions and the logged metrics of that epoch, and an epoch that diverged
    (the guard raises before this runs) is never saved to be resumed.

    Args:
        checkpointing: Where, how often, and the run's key and id.
        progress: The phase's progress (shared with `fit_phase`).
        classifier_model: The whole classifier (whose trained layers are saved).
        skipped_batches: Batches of the first epoch of this `fit` trained before (a mid-epoch resume), so
            that the batch numbers saved are the epoch's.
    """

    def __init__(
        self,
        checkpointing: Checkpointing,
        progress: PhaseProgress,
        classifier_model: keras.Model,
        *,
        skipped_batches: int = 0,
    ) -> None:
        super().__init__()
        self._checkpointing = checkpointing
        self._progress = progress
        self._classifier_model = classifier_model
        self._skipped = skipped_batches
        self._epoch = 0

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._epoch = epoch

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        every = self._checkpointing.every_steps
        if not every:
            return
        steps = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        done = self._skipped + batch + 1
        if steps % every == 0 and done < self.params.get("steps", 0) + self._skipped:
            self.save(epochs_done=self._epoch, batches_done=done)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._skipped = 0
        self.save(epochs_done=epoch + 1, batches_done=0)

    def save(self, *, epochs_done: int, batches_done: int) -> None:
        """Writes the checkpoint of this moment (an epoch's end when `batches_done` is 0)."""
        progress, checkpointing = self._progress, self._checkpointing
        arrays = layer_arrays(self._classifier_model, progress.trained_layers)
        arrays.update(_numbered("optimizer", self.model.optimizer.variables))
        norms = getattr(self.model.optimizer, "gradient_norm_state", None)
        if norms is not None:
            arrays["gradient_norms/0"] = keras.ops.convert_to_numpy(norms)
        if batches_done:
            arrays.update(_numbered("metric", self.model.metrics_variables))
        callbacks = {}
        for role, callback in progress.stateful.items():
            values, best = callback_state(callback)
            callbacks[role] = values
            arrays.update({f"best/{index}": weight for index, weight in enumerate(best)})
        history = progress.history
        state = TrainingState(
            key=checkpointing.key.as_dict(),
            run_id=checkpointing.run_id,
            phase_index=progress.index,
            epochs_done=epochs_done,
            batches_done=batches_done,
            phase_stopped=bool(self.model.stop_training) and not batches_done,
            phase_seconds=time.perf_counter() - progress.started,
            resumes=checkpointing.resumes,
            rows=history.rows,
            phases=[asdict(record) for record in history.phases],
            layers=[asdict(layer) for layer in history.layers],
            trained_layers=progress.trained_layers,
            callbacks=callbacks,
            flags=diagnostics_flags(progress.diagnostics),
        )
        write_checkpoint(checkpointing.path, state, arrays)


def write_start(checkpointing: Checkpointing) -> None:
    """Writes the checkpoint of a run that has trained nothing yet: its key and its tracking run alone.

    Why: the one-time pass that fills the feature cache can take minutes before the first epoch; a run
    killed there is continued (same tracking run, `resume.count` counted) rather than left KILLED beside a
    new one. A resume from it trains from the start (`TrainingState.trained` is false).
    """
    state = TrainingState(
        key=checkpointing.key.as_dict(),
        run_id=checkpointing.run_id,
        phase_index=0,
        epochs_done=0,
        resumes=checkpointing.resumes,
    )
    write_checkpoint(checkpointing.path, state, {})


def _numbered(prefix: str, variables: Sequence[Any]) -> dict[str, np.ndarray]:
    return {f"{prefix}/{index}": keras.ops.convert_to_numpy(variable) for index, variable in enumerate(variables)}


def note_trained_layers(trained_layers: list[str], model: keras.Model) -> None:
    """Adds the layers of a phase's model that hold variables to `trained_layers` (what checkpoints save).

    Why not every layer: under the feature cache a phase's model starts at its cut, and the frozen layers
    below it keep their pretrained values, which a resumed run rebuilds from the backbone; only the layers
    some phase fitted can differ. On the frozen phase that is the head alone, a few kilobytes per epoch.
    """
    for layer in model.layers:
        if layer.variables and layer.name not in trained_layers and not isinstance(layer, keras.layers.InputLayer):
            trained_layers.append(layer.name)


def stateful_callbacks(
    stopper: keras.callbacks.Callback | None, schedule_callbacks: Sequence[keras.callbacks.Callback]
) -> dict[str, keras.callbacks.Callback]:
    """The phase's callbacks whose state a checkpoint saves, by role: early stopping and the plateau schedule."""
    found = {"early_stopping": stopper} if stopper is not None else {}
    for callback in schedule_callbacks:
        if isinstance(callback, keras.callbacks.ReduceLROnPlateau):
            found["plateau"] = callback
    return found


def restore_optimizer(model: keras.Model, checkpoint: Checkpoint) -> None:
    """Builds the compiled phase's optimiser for its trainable variables and puts back its saved state.

    Why build first: Keras creates an optimiser's slots at its first step; the saved slots (Adam's moments,
    the iteration count that drives the schedule) need them to exist, in the order Keras makes them.
    """
    optimizer = model.optimizer
    optimizer.build(model.trainable_variables)
    assign_all(optimizer.variables, checkpoint.array_list("optimizer"), what="optimizer")
    norms = getattr(optimizer, "gradient_norm_state", None)
    saved = checkpoint.array_list("gradient_norms")
    if norms is not None and saved:
        norms.assign(saved[0])


def fit_phase(
    phase_data: PhaseData,
    *,
    first_epoch: int,
    end_epoch: int,
    callbacks: Sequence[keras.callbacks.Callback],
    checkpointing: Checkpointing | None,
    progress: PhaseProgress,
    classifier_model: keras.Model,
    resume: Checkpoint | None,
    verbose: int,
) -> None:
    """Fits one phase from where it stands: from its first epoch, or from a checkpoint of it.

    Args:
        phase_data: The phase's compiled model and data.
        first_epoch: The epoch to start from (a resume's next epoch).
        end_epoch: The phase's last epoch + 1 on the global axis.
        callbacks: The phase's callbacks in order (the stateful ones among them, as `progress.stateful`).
        checkpointing: Where to checkpoint; None for no checkpoints.
        progress: The phase's progress, shared with the checkpoint writer.
        classifier_model: The whole classifier.
        resume: The checkpoint this phase resumes from (its optimiser already restored), or None.
        verbose: Keras' `fit` verbosity.
    """
    skipped = resume.state.batches_done if resume is not None else 0
    stopped = resume.state.phase_stopped if resume is not None else False
    states: dict[keras.callbacks.Callback, tuple[dict[str, Any], list[np.ndarray]]] = {}
    if resume is not None:
        best = resume.array_list("best")
        states = {
            callback: (resume.state.callbacks.get(role, {}), best if role == "early_stopping" else [])
            for role, callback in progress.stateful.items()
        }
    # A mid-epoch resume: the rest of that epoch alone, then the phase's other epochs.
    segments = [(first_epoch, first_epoch + 1, skipped)] if skipped else []
    if first_epoch + (1 if skipped else 0) < end_epoch:
        segments.append((first_epoch + (1 if skipped else 0), end_epoch, 0))
    stopper = progress.stateful.get("early_stopping")
    if stopped or not segments:
        # The checkpoint was written at the phase's last epoch: only its end remains (the best epoch's weights).
        _finish_without_fitting(phase_data.model, stopper, states)
        return
    for number, (start, end, skip) in enumerate(segments):
        last = number == len(segments) - 1
        if stopper is not None:
            stopper.restore_at_train_end = last
        restorer = StateRestorer(states, metric_values=resume.array_list("metric") if skip and resume else ())
        writer = (
            [CheckpointWriter(checkpointing, progress, classifier_model, skipped_batches=skip)]
            if checkpointing is not None
            else []
        )
        fit_arguments: dict[str, Any] = {
            "validation_data": phase_data.val,
            "initial_epoch": start,
            "epochs": end,
            "steps_per_epoch": phase_data.steps_per_epoch - skip,
            "callbacks": [*callbacks, restorer, *writer],
            "verbose": verbose,
        }
        training = phase_data.train(first_epoch=start, end_epoch=end, skip_batches=skip)
        if needs_custom_loop(phase_data.model):
            # Several workers: Keras' fit fails under their strategy (pipeline.training.distributed).
            fit_with_strategy_run(phase_data.model, training, **fit_arguments)
        else:
            # shuffle off: each epoch's order is drawn from the run's seed and the epoch (EpochOrder).
            phase_data.model.fit(training, shuffle=False, **fit_arguments)
        if phase_data.model.stop_training:
            break
        states = {callback: callback_state(callback) for callback in progress.stateful.values()}


def _finish_without_fitting(
    model: keras.Model,
    stopper: keras.callbacks.Callback | None,
    states: dict[keras.callbacks.Callback, tuple[dict[str, Any], list[np.ndarray]]],
) -> None:
    restore_callback_states(states)
    if isinstance(stopper, keras.callbacks.EarlyStopping) and stopper.restore_best_weights and stopper.best_weights:
        model.set_weights(stopper.best_weights)
