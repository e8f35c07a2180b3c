"""pipeline/training/resume.py and checkpoint.py: a run resumed from any checkpoint ends as the uninterrupted run.

Each test trains once without interruption, keeping a copy of every checkpoint it wrote (after every epoch,
and every 4 steps within one), then resumes fresh classifiers from chosen copies: in the frozen phase,
between phases, in the unfreeze phase, and mid-epoch. The resumed runs must end with bit-identical weights
and the same history, epoch for epoch, with early stopping's and the plateau schedule's state carried over.
The process-level tests (SIGKILL of `python -m stages.train`, the MLflow run continued) are in
tests/stages/test_resume.py.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import keras
import numpy as np
import pytest

from pipeline.model.head import build_head
from pipeline.params.head import HeadParams
from pipeline.params.optimizer import AdamParams
from pipeline.params.schedule import ConstantParams, PerformanceParams
from pipeline.params.train import EarlyStoppingParams
from pipeline.training import resume as resume_module
from pipeline.training.checkpoint import CheckpointKey, read_checkpoint, read_state
from pipeline.training.recipe import Phase
from pipeline.training.resume import Checkpointing
from tests.conftest import build_tiny_backbone, fine_tune_tiny

IMAGE_SIZE = 16
KEY = CheckpointKey(params={"train.seed": "7"}, data={"data.manifest_sha256": "abc"}, code={"recipe.py": "1"})
PHASES = [
    Phase(
        "frozen",
        0,
        8,
        0.08,
        optimizer=AdamParams(name="adam"),
        schedule=ConstantParams(name="constant"),
        early_stopping=EarlyStoppingParams(monitor="val_loss", patience=1, restore_best=True),
        min_epochs=2,
    ),
    Phase(
        "unfreeze_top_2",
        2,
        4,
        0.03,
        optimizer=AdamParams(name="adam"),
        schedule=PerformanceParams(name="performance", patience=0, factor=0.5, monitor="val_loss"),
        bn_policy="trainable",
    ),
]


def _classifier():
    keras.utils.set_random_seed(7)
    head = HeadParams(pooling="avg", dropout=0.3, hidden_units=[8], batch_norm="before", hidden_dropout=0.2)
    return build_head(build_tiny_backbone(IMAGE_SIZE), head, num_classes=3, seed=7)


def _weights(model: keras.Model) -> list[np.ndarray]:
    return [keras.ops.convert_to_numpy(variable) for variable in model.variables]


def _train(path: Path, *, resume=None, cache_bytes: int = 1 << 30):
    classifier = _classifier()
    checkpointing = Checkpointing(path=path, key=KEY, run_id="run-1", every_steps=4, resume=resume)
    history = fine_tune_tiny(
        classifier, PHASES, image_size=IMAGE_SIZE, cache_bytes=cache_bytes, checkpointing=checkpointing
    )
    return classifier, history


@pytest.fixture
def kept_checkpoints(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """Copies of every checkpoint the run writes, in order, as `copies`."""
    copies: list[Path] = []
    write = resume_module.write_checkpoint

    def write_and_keep(path, state, arrays):
        write(path, state, arrays)
        copies.append(tmp_path / f"copy-{len(copies):03d}.npz")
        shutil.copy(path, copies[-1])

    monkeypatch.setattr(resume_module, "write_checkpoint", write_and_keep)
    return copies


@pytest.mark.parametrize("cache_bytes", [1 << 30, 0], ids=["cached-features", "images"])
def test_a_run_resumed_from_any_checkpoint_ends_bit_identical(tmp_path, kept_checkpoints, cache_bytes) -> None:
    classifier, history = _train(tmp_path / "train.npz", cache_bytes=cache_bytes)
    expected_weights, expected_rows = _weights(classifier.model), history.rows
    # The run exercises what must carry over: early stopping ends the frozen phase and restores an earlier
    # epoch, and the plateau schedule halves the LR in the unfreeze phase.
    assert (history.phases[0].end_epoch, history.phases[0].best_epoch) == (4, 2)
    assert len({row["lr"] for row in history.rows if row["phase"] == 1.0}) == 2
    states = [read_state(copy) for copy in kept_checkpoints]
    kept_checkpoints_now = list(kept_checkpoints)
    # One before the first step (the run's id alone), then with 6 steps per epoch a mid-epoch checkpoint every
    # 4 steps and one at every epoch's end.
    assert [(state.phase_index, state.epochs_done, state.batches_done) for state in states][:5] == [
        (0, 0, 0),
        (0, 0, 4),
        (0, 1, 0),
        (0, 1, 2),  # step 8 of the phase: batch 2 of epoch 2
        (0, 2, 0),
    ]
    frozen_end = max(number for number, state in enumerate(states) if state.phase_index == 0)
    in_frozen = 2
    in_unfreeze = next(
        number for number, state in enumerate(states) if state.phase_index == 1 and not state.batches_done
    )
    mid_epoch = next(number for number, state in enumerate(states) if state.phase_index == 1 and state.batches_done)
    for moment in (in_frozen, frozen_end, in_unfreeze, mid_epoch):
        resumed, resumed_history = _train(
            tmp_path / f"resumed-{moment}.npz",
            resume=read_checkpoint(kept_checkpoints_now[moment]),
            cache_bytes=cache_bytes,
        )
        assert resumed_history.rows == expected_rows, moment
        assert [record.best_epoch for record in resumed_history.phases] == [
            record.best_epoch for record in history.phases
        ]
        for got, want in zip(_weights(resumed.model), expected_weights, strict=True):
            np.testing.assert_array_equal(got, want, err_msg=f"resumed from checkpoint {moment}")


def test_a_checkpoint_holds_the_state_of_early_stopping_and_the_plateau_schedule(tmp_path, kept_checkpoints) -> None:
    _, history = _train(tmp_path / "train.npz")
    states = [read_state(copy) for copy in kept_checkpoints if read_state(copy).batches_done == 0]

    frozen = [state for state in states if state.phase_index == 0]
    assert set(frozen[-1].callbacks) == {"early_stopping"}
    stopping = frozen[-1].callbacks["early_stopping"]
    assert stopping["has_best_weights"] is True
    assert stopping["best"] == pytest.approx(min(row["val_loss"] for row in history.rows[: len(frozen)]))
    unfreeze = [state for state in states if state.phase_index == 1]
    assert set(unfreeze[0].callbacks) == {"plateau"}
    assert unfreeze[-1].rows == history.rows
    assert [phase["name"] for phase in unfreeze[0].phases] == ["frozen"]


def test_the_frozen_phase_checkpoints_only_the_head(tmp_path, kept_checkpoints) -> None:
    _train(tmp_path / "train.npz")
    assert read_checkpoint(kept_checkpoints[0]).state.trained_layers == []  # the start: nothing trained yet
    first = read_checkpoint(kept_checkpoints[1])
    assert all(name.startswith("head_") for name in first.state.trained_layers)
    last = read_state(kept_checkpoints[-1])
    assert {"top_conv", "block2a_conv"} <= set(last.trained_layers)


def test_a_key_says_what_changed() -> None:
    changed = CheckpointKey(
        params={"train.seed": "8", "head.dropout": "0.3"}, data=dict(KEY.data), code={"recipe.py": "2"}
    )
    assert changed.difference(KEY) == (
        "params changed since the interrupted run: head.dropout, train.seed; "
        "code changed since the interrupted run: recipe.py"
    )
    assert KEY.difference(KEY) is None
