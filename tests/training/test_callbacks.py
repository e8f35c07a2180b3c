"""pipeline/training/callbacks.py: the history recorder, early stopping and the divergence guard."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from pipeline.optim.schedules import learning_rate_used
from pipeline.training.callbacks import DivergenceGuard, HistoryRecorder, early_stopping
from pipeline.training.divergence import TrainingDivergedError
from pipeline.training.history import TrainingHistory
from tests.training.conftest import PHASE


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
