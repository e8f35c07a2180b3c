"""One epoch history across phases: recording, describing and saving."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import keras
import numpy as np
import pytest

from pipeline.optim.schedules import learning_rate_used
from pipeline.training.callbacks import DivergenceGuard, HistoryRecorder, early_stopping
from pipeline.training.divergence import TrainingDivergedError
from pipeline.training.history import PhaseRecord, TrainingHistory

PHASE = PhaseRecord(
    index=1,
    name="unfreeze_top_2",
    trainable_blocks=2,
    learning_rate=5e-4,
    first_epoch=4,
    end_epoch=7,
    cached_features=True,
    optimizer="adam",
    schedule="cosine",
    bn_policy="affine",
    lr_decay_per_block=2.6,
    data_note="frozen activations computed once and reused",
    seconds=12.4,
)


def test_describe_numbers_epochs_from_one() -> None:
    assert PHASE.describe() == (
        "unfreeze_top_2: epochs 5-7, adam lr 0.0005 (cosine), lr / 2.6 per lower block, BN affine, "
        "cached features True (frozen activations computed once and reused), 12 s"
    )


def test_describe_says_which_epoch_was_restored() -> None:
    stopped = PhaseRecord(
        index=0,
        name="frozen",
        trainable_blocks=0,
        learning_rate=0.001,
        first_epoch=0,
        end_epoch=3,
        cached_features=False,
        optimizer="sgd",
        best_epoch=1,
        data_note="augmentation",
        seconds=2,
    )
    assert stopped.describe() == (
        "frozen: epochs 1-3, restored best epoch 2, sgd lr 0.001 (constant), BN frozen, "
        "cached features False (augmentation), 2 s"
    )


def test_early_stopping_is_keras_own_with_the_settings() -> None:
    stopper = early_stopping(monitor="val_accuracy", patience=3, min_delta=0.01, restore_best=True)
    assert isinstance(stopper, keras.callbacks.EarlyStopping)
    assert (stopper.monitor, stopper.patience, stopper.min_delta, stopper.restore_best_weights) == (
        "val_accuracy",
        3,
        0.01,
        True,
    )


def test_recorder_requires_a_phase() -> None:
    recorder = HistoryRecorder(TrainingHistory())
    with pytest.raises(RuntimeError, match="begin_phase must be called before fit"):
        recorder.on_epoch_end(0, {})


def test_recorder_adds_lr_for_later_callbacks_and_keeps_the_phase_out_of_keras_logs() -> None:
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2, activation="softmax")])
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.25), loss="sparse_categorical_crossentropy")
    history = TrainingHistory()
    recorder = HistoryRecorder(history)
    recorder.begin_phase(PHASE)
    seen: list[dict[str, float]] = []
    spy = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: seen.append(dict(logs)))
    model.fit(np.ones((4, 2)), np.zeros(4), initial_epoch=4, epochs=6, verbose=0, callbacks=[recorder, spy])
    assert [row["epoch"] for row in history.rows] == [4, 5]
    assert [row["phase_name"] for row in history.rows] == ["unfreeze_top_2"] * 2
    assert [entry["lr"] for entry in seen] == [0.25, 0.25]
    assert ["phase" in entry for entry in seen] == [False, False]
    assert [row["phase"] for row in history.rows] == [1.0, 1.0]
    assert learning_rate_used(model.optimizer) == 0.25


def test_save_writes_exact_csv_and_json(tmp_path: Path) -> None:
    row = {
        "epoch": 4,
        "phase_name": "unfreeze_top_2",
        "loss": 0.5,
        "accuracy": 0.75,
        "val_loss": 0.625,
        "val_accuracy": 0.5,
        "lr": 0.0005,
        "phase": 1.0,
    }
    history = TrainingHistory(rows=[row], phases=[PHASE])
    history.save(csv_path=tmp_path / "h.csv", json_path=tmp_path / "sub" / "h.json")
    with (tmp_path / "h.csv").open(newline="") as handle:
        assert list(csv.reader(handle)) == [
            ["epoch", "phase", "phase_name", "loss", "accuracy", "val_loss", "val_accuracy", "lr"],
            ["4", "1.0", "unfreeze_top_2", "0.5", "0.75", "0.625", "0.5", "0.0005"],
        ]
    document = json.loads((tmp_path / "sub" / "h.json").read_text())
    assert document["epochs"] == [row]
    assert document["phases"][0]["end_epoch"] == 7


def test_divergence_guard_stops_fit_after_the_spy_saw_the_epoch() -> None:
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(3, activation="softmax")])
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=1e6), loss="sparse_categorical_crossentropy")
    guard = DivergenceGuard(num_classes=3)
    guard.begin_phase(PHASE)
    seen: list[int] = []
    spy = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: seen.append(epoch))
    features = np.random.default_rng(0).normal(size=(32, 2)).astype(np.float32)
    with pytest.raises(TrainingDivergedError, match=r"^training diverged in epoch 1 \(phase unfreeze_top_2\): loss "):
        model.fit(features, np.arange(32) % 3, epochs=5, batch_size=4, verbose=0, callbacks=[spy, guard])
    assert seen == [0]


def test_divergence_guard_lets_a_sane_run_finish() -> None:
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(3, activation="softmax")])
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.1), loss="sparse_categorical_crossentropy")
    features = np.random.default_rng(0).normal(size=(32, 2)).astype(np.float32)
    history = model.fit(features, np.arange(32) % 3, epochs=3, verbose=0, callbacks=[DivergenceGuard(num_classes=3)])
    assert len(history.history["loss"]) == 3
