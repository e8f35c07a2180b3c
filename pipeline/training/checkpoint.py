"""Checkpoints of multi-phase fine-tuning: everything a killed `train` needs to go on where it stopped.

Why our own and not Keras' `BackupAndRestore`: it deletes its backup at the end of every `fit`, so a
pipeline of several `fit`s (one per phase) restarts the earlier phases; it rebuilds the optimiser for
whatever is trainable when it restores, and keeps no callback state (early stopping's best epoch and
patience, the plateau schedule's wait). A checkpoint here holds the phase and the epoch within it (and
the batch, for a mid-epoch one), the weights that training changed (BatchNorm statistics and dropout's
random state included), the phase's optimiser state, the state of the callbacks that carry one, the
diagnostics' flags, the history so far and the tracking run's id. With the training order drawn from the
seed and the epoch alone (`pipeline.data.datasets.EpochOrder`), a resumed run trains the batches an
uninterrupted run would, with the same random draws.

The checkpoint is one `.npz` file, written beside the final path and renamed over it (atomic on POSIX): a
crash mid-write leaves the previous checkpoint, never half of one. It is keyed by what decides training
(`CheckpointKey`): a checkpoint of other params, data or code is not used, and `CheckpointKey.difference`
says why in one line.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import keras
import numpy as np

from pipeline.errors import OutputWriteError
from pipeline.model.freezing import LayerState
from pipeline.runtime.atomic import atomic_path, remove_stale_temporaries
from pipeline.training.history import PhaseRecord, TrainingHistory

if TYPE_CHECKING:
    from pipeline.training.diagnostics import TrainingDiagnostics

# Bumped when the layout changes: an older checkpoint is then not used (and the line says so).
FORMAT_VERSION = 1
_STATE_ENTRY = "state.json"


def file_digests(root: Path, paths: Iterable[str], *, suffixes: tuple[str, ...] = (".py",)) -> dict[str, str]:
    """The sha256 of every file under `paths` (relative to `root`) with one of `suffixes`: the code's version.

    Why the files' contents and not the git commit: an uncommitted edit changes what trains as much as a
    commit does, and two commits that leave these files alone train the same.

    Args:
        root: The project's root.
        paths: Files or folders, relative to `root`.
        suffixes: Which files of a folder count.

    Returns:
        Relative path (POSIX) -> hex digest, sorted by path.
    """
    found: dict[str, str] = {}
    for relative in paths:
        path = root / relative
        files = sorted(path.rglob("*")) if path.is_dir() else [path]
        for file in files:
            if file.is_file() and (file.suffix in suffixes or file == path) and "__pycache__" not in file.parts:
                found[file.relative_to(root).as_posix()] = hashlib.sha256(file.read_bytes()).hexdigest()
    return dict(sorted(found.items()))


@dataclass(frozen=True)
class CheckpointKey:
    """What decides training: a checkpoint is resumed only when all of it is the same.

    Attributes:
        params: The params `train` reads, flattened (`train.base_learning_rate` -> its value as text), the
            resolved base learning rate included.
        data: The data's fingerprint (manifest and source digests, counts).
        code: The code's files -> their digests (`file_digests`).
    """

    params: Mapping[str, str]
    data: Mapping[str, str]
    code: Mapping[str, str]

    def as_dict(self) -> dict[str, dict[str, str]]:
        """The key as a checkpoint's state holds it (`TrainingState.key`)."""
        return {"params": dict(self.params), "data": dict(self.data), "code": dict(self.code)}

    def difference(self, saved: CheckpointKey) -> str | None:
        """Why a checkpoint saved under `saved` does not fit this run, in one line; None when it does."""
        reasons = []
        for what, now, before in (
            ("params", self.params, saved.params),
            ("data", self.data, saved.data),
            ("code", self.code, saved.code),
        ):
            changed = sorted(key for key in now.keys() | before.keys() if now.get(key) != before.get(key))
            if changed:
                shown = ", ".join(changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
                reasons.append(f"{what} changed since the interrupted run: {shown}")
        return "; ".join(reasons) or None


@dataclass
class TrainingState:
    """Where training stands, as a checkpoint holds it (everything but the arrays).

    Attributes:
        key: What decided training (`CheckpointKey` as a dict).
        run_id: The tracking run the epochs were logged to.
        phase_index: The phase being trained.
        epochs_done: Epochs finished on the global axis (the next epoch's index).
        batches_done: Batches of the next epoch already trained (a mid-epoch checkpoint), else 0.
        phase_stopped: Whether early stopping ended the phase at its last epoch.
        phase_seconds: Wall time spent in the phase so far, over every process that trained it.
        resumes: How many times this training was resumed before.
        rows: The history's epochs so far.
        phases: The finished phases' records.
        layers: The trainable-layer map so far.
        trained_layers: Layers whose weights training may have changed (saved in the arrays).
        callbacks: The state of each callback that carries one, by role.
        flags: The diagnostics' flags raised so far (name -> epoch and detail).
    """

    key: dict[str, dict[str, str]]
    run_id: str
    phase_index: int
    epochs_done: int
    batches_done: int = 0
    phase_stopped: bool = False
    phase_seconds: float = 0.0
    resumes: int = 0
    rows: list[dict[str, Any]] = field(default_factory=list)
    phases: list[dict[str, Any]] = field(default_factory=list)
    layers: list[dict[str, Any]] = field(default_factory=list)
    trained_layers: list[str] = field(default_factory=list)
    callbacks: dict[str, dict[str, Any]] = field(default_factory=dict)
    flags: dict[str, dict[str, Any]] = field(default_factory=dict)
    version: int = FORMAT_VERSION

    @property
    def trained(self) -> bool:
        """Whether anything was trained (a checkpoint written before the first step only names its run)."""
        return bool(self.rows) or self.batches_done > 0

    @property
    def checkpoint_key(self) -> CheckpointKey:
        return CheckpointKey(**self.key)

    def history(self) -> TrainingHistory:
        """The history as the checkpoint left it (the current phase's record is not in it until it ends)."""
        return TrainingHistory(
            rows=[dict(row) for row in self.rows],
            phases=[PhaseRecord(**phase) for phase in self.phases],
            layers=[LayerState(**layer) for layer in self.layers],
        )

    def where(self) -> str:
        """Where training goes on, for the printed line: "epoch 5 (phase 2, unfreeze_top_2), batch 40"."""
        at = f"epoch {self.epochs_done + 1}"
        return at + (f", after batch {self.batches_done}" if self.batches_done else "")


@dataclass
class Checkpoint:
    """A checkpoint read back: its state and its arrays by name."""

    state: TrainingState
    arrays: dict[str, np.ndarray]

    def array_list(self, prefix: str) -> list[np.ndarray]:
        """The arrays `<prefix>/0`, `<prefix>/1`, ... in order."""
        found = []
        while f"{prefix}/{len(found)}" in self.arrays:
            found.append(self.arrays[f"{prefix}/{len(found)}"])
        return found


def read_state(path: Path) -> TrainingState | None:
    """The state of the checkpoint at `path` without its arrays; None when there is none or it is unreadable.

    An unreadable file (another format, cut short by something other than our rename) counts as none: the
    run starts afresh rather than train from something it cannot trust.
    """
    checkpoint = _read(path, with_arrays=False)
    return checkpoint.state if checkpoint is not None else None


def read_checkpoint(path: Path) -> Checkpoint | None:
    """The checkpoint at `path` with its arrays; None when there is none or it is unreadable."""
    return _read(path, with_arrays=True)


def _read(path: Path, *, with_arrays: bool) -> Checkpoint | None:
    """The checkpoint's state, and its arrays when asked, from one opening of the archive."""
    try:
        # An npz archive is read member by member: without the arrays, only the state is read.
        with np.load(path, allow_pickle=False) as archive:
            document = json.loads(archive[_STATE_ENTRY].tobytes().decode("utf-8"))
            if document.get("version") != FORMAT_VERSION:
                return None
            # A member damaged after the state fails its CRC here.
            arrays = {name: archive[name] for name in archive.files if name != _STATE_ENTRY} if with_arrays else {}
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None
    return Checkpoint(TrainingState(**document), arrays)


def write_checkpoint(path: Path, state: TrainingState, arrays: Mapping[str, np.ndarray]) -> None:
    """Writes the checkpoint atomically (`pipeline.runtime.atomic`): to a file beside `path`, fsynced, renamed over it.

    Args:
        path: The checkpoint's path (its folder is created).
        state: Where training stands.
        arrays: Name -> array.

    Raises:
        OutputWriteError: The file could not be written (disk full, a read-only folder); the previous
            checkpoint is left as it was.
    """
    encoded = json.dumps(asdict(state)).encode("utf-8")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputWriteError(f"cannot write {path}: {error.strerror or error}; make the folder writable") from None
    with atomic_path(path) as temporary, temporary.open("wb") as handle:
        # The state as a uint8 array in the same archive, so one rename publishes state and arrays together.
        np.savez(handle, **{_STATE_ENTRY: np.frombuffer(encoded, dtype=np.uint8)}, **arrays)


def remove_checkpoint(path: Path) -> None:
    """Removes the checkpoint (a finished `train`), and any temporary file a killed writer left."""
    path.unlink(missing_ok=True)
    if path.parent.is_dir():
        remove_stale_temporaries(path)


# What each kind of callback carries across epochs, and what its `on_train_begin` resets.
_EARLY_STOPPING_STATE = ("wait", "stopped_epoch", "best", "best_epoch")
_PLATEAU_STATE = ("wait", "cooldown_counter", "best")


def callback_state(callback: keras.callbacks.Callback) -> tuple[dict[str, Any], list[np.ndarray]]:
    """The state a callback carries across epochs (JSON-able values, and arrays: the best weights kept).

    Args:
        callback: Early stopping, the plateau schedule, or any other callback (which carries none).

    Returns:
        (values, arrays); both empty for a callback without state.
    """
    if isinstance(callback, keras.callbacks.EarlyStopping):
        values = {name: _plain(getattr(callback, name)) for name in _EARLY_STOPPING_STATE}
        best_weights = callback.best_weights
        values["has_best_weights"] = best_weights is not None
        return values, [np.asarray(weight) for weight in best_weights or []]
    if isinstance(callback, keras.callbacks.ReduceLROnPlateau):
        return {name: _plain(getattr(callback, name)) for name in _PLATEAU_STATE}, []
    return {}, []


def restore_callback_state(
    callback: keras.callbacks.Callback, values: Mapping[str, Any], arrays: list[np.ndarray]
) -> None:
    """Puts back what `callback_state` took (after the callback's `on_train_begin` reset it)."""
    if isinstance(callback, keras.callbacks.EarlyStopping):
        for name in _EARLY_STOPPING_STATE:
            setattr(callback, name, values[name])
        callback.best_weights = list(arrays) if values["has_best_weights"] else None
    elif isinstance(callback, keras.callbacks.ReduceLROnPlateau):
        for name in _PLATEAU_STATE:
            setattr(callback, name, values[name])


def restore_callback_states(
    states: Mapping[keras.callbacks.Callback, tuple[Mapping[str, Any], list[np.ndarray]]],
) -> None:
    """`restore_callback_state` for each callback with saved values (those without carry nothing)."""
    for callback, (values, arrays) in states.items():
        if values:
            restore_callback_state(callback, values, arrays)


def _plain(value: Any) -> Any:
    """A number as JSON keeps it (numpy scalars and infinities included: json writes Infinity); None stays."""
    if value is None:
        return None
    return float(value) if isinstance(value, (float, np.floating)) else int(value)


class StateRestorer(keras.callbacks.Callback):
    """Gives callbacks back their state when a `fit` begins, after their own `on_train_begin` reset it.

    Why: a phase resumed from a checkpoint, or continued by a second `fit` after a mid-epoch resume, is one
    phase to early stopping and the plateau schedule; Keras' callbacks forget everything in `on_train_begin`.
    It must come after them in the callback list. It also restores the epoch's running metrics (loss and
    accuracy sums) when the first epoch resumes mid-way, once Keras has built them.

    Args:
        states: Callback -> (values, arrays) to restore.
        metric_values: The model's metric variables at the mid-epoch checkpoint (empty: none to restore).
    """

    def __init__(
        self,
        states: Mapping[keras.callbacks.Callback, tuple[Mapping[str, Any], list[np.ndarray]]],
        metric_values: Sequence[np.ndarray] = (),
    ) -> None:
        super().__init__()
        self._states = dict(states)
        self._metric_values = list(metric_values)

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        restore_callback_states(self._states)

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        # Keras builds the compiled metrics inside the first training step, so they exist only now. The epoch's
        # metrics are running sums (a total and a count each), so adding the sums saved before the kill gives
        # what the uninterrupted epoch holds after this batch: saved + batch, exactly (addition is commutative).
        if not self._metric_values:
            return
        variables = self.model.metrics_variables
        if len(variables) != len(self._metric_values):
            raise ValueError(
                f"the checkpoint holds {len(self._metric_values)} metric values for {len(variables)} variables"
            )
        for variable, value in zip(variables, self._metric_values, strict=True):
            variable.assign(keras.ops.convert_to_numpy(variable) + value)
        self._metric_values = []


def assign_all(variables: Sequence[Any], values: Sequence[np.ndarray], *, what: str) -> None:
    """Assigns saved values to variables in order, refusing a checkpoint that does not match them.

    Raises:
        ValueError: The counts or a shape differ (a checkpoint of another model; its key should have said so).
    """
    if len(variables) != len(values):
        raise ValueError(f"the checkpoint holds {len(values)} {what} values for {len(variables)} variables")
    for variable, value in zip(variables, values, strict=True):
        if tuple(variable.shape) != tuple(value.shape):
            raise ValueError(f"the checkpoint's {what} value for {variable.path} has shape {value.shape}")
        variable.assign(value)


def layer_arrays(model: keras.Model, layer_names: Sequence[str]) -> dict[str, np.ndarray]:
    """The variables of these layers (weights, BatchNorm statistics, dropout's random state) by name."""
    arrays = {}
    for name in layer_names:
        for index, variable in enumerate(model.get_layer(name).variables):
            arrays[f"layer/{name}/{index}"] = keras.ops.convert_to_numpy(variable)
    return arrays


def restore_layers(model: keras.Model, checkpoint: Checkpoint) -> None:
    """Puts back the variables of the layers training changed, as `layer_arrays` saved them."""
    for name in checkpoint.state.trained_layers:
        assign_all(model.get_layer(name).variables, checkpoint.array_list(f"layer/{name}"), what=f"layer {name}")


def diagnostics_flags(diagnostics: TrainingDiagnostics | None) -> dict[str, dict[str, Any]]:
    """The flags raised so far, as JSON."""
    if diagnostics is None:
        return {}
    return {name: {"epoch": flag.epoch, "detail": flag.detail} for name, flag in diagnostics.flags.items()}
