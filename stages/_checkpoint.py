"""The train stage's checkpoint: where it lives, what keys it, and whether a start resumes from it.

Why a file of its own: `stages/train.py` reads as the recipe; deciding to resume reads params, the data
fingerprint, the code and the tracking store, and says in one line why a checkpoint is not used.

The checkpoint lives in build/checkpoint/, which no stage declares as an output: DVC deletes a stage's
declared outputs before it runs the stage again, which is exactly when the checkpoint is needed.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pipeline import params
from stages._entry import MANIFEST

if TYPE_CHECKING:
    from pipeline.tracking.runs import RunReference
    from pipeline.training.checkpoint import Checkpoint, CheckpointKey

TRAIN_CHECKPOINT = Path("build/checkpoint/train.npz")
# The params the train stage reads (its `params:` in dvc.yaml; tests/stages/test_dvc_yaml.py keeps them equal).
TRAIN_PARAMS = (
    "data.kind",
    "data.path",
    "data.classes",
    "backbone",
    "head",
    "train",
    "lr_find.rule",
    "device",
    "tracking.uri",
    "tracking.artifact_dir",
    "tracking.experiment",
    "tracking.system_metrics_interval",
    "tracking.reconnect_seconds",
    "diagnostics",
)
# Read by train but deciding nothing it computes: changing them must not throw a checkpoint away.
NOT_IN_KEY = (
    "train.resume",
    "train.checkpoint_every_steps",
    "tracking.system_metrics_interval",
    "tracking.reconnect_seconds",
)
# The code whose version keys a checkpoint (the params and data are keyed apart).
CODE = ("pipeline", "stages")


def checkpoint_key(
    config: params.PipelineParams, *, base_learning_rate: float, tracking_uri: str, source_sha256: str
) -> CheckpointKey:
    """What decides this training: the params train reads, the data's fingerprint, the code's digests.

    Args:
        config: The validated params.
        base_learning_rate: The frozen phase's LR as resolved (the LR range test's suggestion for `auto`).
        tracking_uri: The tracking store in use (`MLFLOW_TRACKING_URI` may override `tracking.uri`): the run a
            checkpoint names is in it.
        source_sha256: The data source's digest.

    Returns:
        The key.
    """
    from pipeline.tracking import provenance
    from pipeline.training.checkpoint import CheckpointKey, file_digests

    flat = params.flatten(config)
    read = {key: value for key, value in flat.items() if _under(key, TRAIN_PARAMS) and not _under(key, NOT_IN_KEY)}
    read["train.base_learning_rate (resolved)"] = repr(float(base_learning_rate))
    read["tracking.uri (resolved)"] = tracking_uri
    return CheckpointKey(
        params=read,
        data=provenance.data_fingerprint(manifest=MANIFEST, source_sha256=source_sha256),
        code=file_digests(Path.cwd(), CODE),
    )


def _under(key: str, sections: tuple[str, ...]) -> bool:
    """Whether the flattened `key` is one of `sections` or inside one (`train.seed` is under `train`)."""
    return any(key == name or key.startswith(f"{name}.") for name in sections)


def resume_point(
    config: params.PipelineParams, key: CheckpointKey, *, tracking_uri: str
) -> tuple[Checkpoint | None, RunReference | None]:
    """The checkpoint this start resumes from and its tracking run, or (None, None) to train from the start.

    A checkpoint is used only when its key is this run's and its run is still in the tracking store;
    otherwise one line says why, and it is removed (the run writes its own).

    Args:
        config: The validated params (`train.resume` false: never resume).
        key: This training's key.
        tracking_uri: The tracking store in use.

    Returns:
        (checkpoint, its run), or (None, None).
    """
    from pipeline.tracking.lifecycle import find_run
    from pipeline.training.checkpoint import read_checkpoint, read_state, remove_checkpoint

    if not config.train.resume or not TRAIN_CHECKPOINT.exists():
        return None, None
    state = read_state(TRAIN_CHECKPOINT)
    reference = None
    if state is None:
        why = "it cannot be read (another version of the pipeline wrote it, or it is damaged)"
    else:
        why = key.difference(state.checkpoint_key)
        reference = find_run(tracking_uri, state.run_id) if why is None else None
        if why is None and reference is None:
            why = f"its run {state.run_id} is no longer in the tracking store {tracking_uri}"
    checkpoint = read_checkpoint(TRAIN_CHECKPOINT) if why is None else None
    if checkpoint is None or reference is None:
        print(f"not resuming from {TRAIN_CHECKPOINT}: {why or 'it cannot be read'}; training from the start")
        remove_checkpoint(TRAIN_CHECKPOINT)
        return None, None
    return checkpoint, reference
