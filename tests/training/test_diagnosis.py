"""The diagnosis of the history: each verdict on curves built by hand, and on tiny runs that show it."""

from __future__ import annotations

import json
import math

import keras
import numpy as np
import pytest

from pipeline.training.diagnosis import diagnose
from pipeline.training.history import PhaseRecord, TrainingHistory

# Where the seeded tiny run's validation loss turns up (its lowest is at epoch 4).
OVERFIT_EPOCH = 5


def _history(loss, val_loss, accuracy=None, val_accuracy=None, best_epoch=None) -> TrainingHistory:
    accuracy = accuracy or [0.9] * len(loss)
    val_accuracy = val_accuracy or [0.9] * len(loss)
    rows = [
        {"epoch": index, "loss": a, "val_loss": b, "accuracy": c, "val_accuracy": d}
        for index, (a, b, c, d) in enumerate(zip(loss, val_loss, accuracy, val_accuracy, strict=True))
    ]
    phase = PhaseRecord(0, "frozen", 0, 1e-3, 0, len(rows), False, best_epoch=best_epoch)
    return TrainingHistory(rows=rows, phases=[phase])


def test_converging_when_the_best_is_recent_and_gains_are_small() -> None:
    found = diagnose(_history([1.0, 0.6, 0.5, 0.45, 0.44], [1.0, 0.7, 0.6, 0.55, 0.548]), num_classes=10)
    assert (found.verdict, found.epoch) == ("converging", 5)


def test_overfitting_starts_the_epoch_after_the_lowest_validation_loss() -> None:
    found = diagnose(
        _history([1.0, 0.6, 0.4, 0.3, 0.2, 0.1], [1.0, 0.7, 0.6, 0.65, 0.75, 0.9], [0.6, 0.8, 0.9, 0.93, 0.96, 0.99]),
        num_classes=10,
    )
    assert (found.verdict, found.epoch, found.details["best_epoch"]) == ("overfitting", 4, 3)
    assert found.details["loss_gap"] == pytest.approx(0.8)
    assert found.details["accuracy_gap"] == pytest.approx(0.09)
    assert found.sentence.startswith("Overfitting from epoch 4: validation loss rose 50% from its lowest (0.6 at")


def test_overfitting_notes_the_epoch_early_stopping_kept() -> None:
    found = diagnose(_history([1.0, 0.6, 0.4, 0.3, 0.2], [1.0, 0.6, 0.7, 0.8, 0.9], best_epoch=1), num_classes=10)
    assert found.verdict == "overfitting"
    assert found.sentence.endswith("; early stopping kept epoch 2.")


def test_underfitting_when_both_losses_stay_high_and_accuracies_agree() -> None:
    found = diagnose(
        _history([2.0, 1.9, 1.85, 1.84], [2.0, 1.9, 1.86, 1.85], [0.3, 0.32, 0.33, 0.33], [0.3, 0.33, 0.33, 0.34]),
        num_classes=10,
    )
    assert (found.verdict, found.epoch) == ("underfitting", 4)


def test_undertrained_when_the_last_epoch_still_improves() -> None:
    found = diagnose(_history([1.0, 0.8, 0.6], [1.0, 0.8, 0.6]), num_classes=10)
    assert (found.verdict, found.epoch) == ("undertrained", 3)
    assert found.details["last_improvement"] == pytest.approx(0.25)


def test_a_one_epoch_last_phase_that_improves_is_not_read_as_undertrained() -> None:
    # The Fashion-MNIST default: 4 frozen, 2 unfrozen at 0.5x, 1 at 0.05x; the lower LR's first epoch drops the loss.
    history = _history([0.43, 0.33, 0.31, 0.29, 0.31, 0.21, 0.13], [0.31, 0.30, 0.28, 0.28, 0.24, 0.22, 0.2])
    history.phases = [
        PhaseRecord(0, "frozen", 0, 1e-3, 0, 4, True),
        PhaseRecord(1, "unfreeze_top_2", 2, 5e-4, 4, 6, True),
        PhaseRecord(2, "unfreeze_top_2", 2, 5e-5, 6, 7, True),
    ]
    found = diagnose(history, num_classes=10)
    assert (found.verdict, found.epoch) == ("converging", 7)
    assert found.details["last_improvement"] == pytest.approx(0.2 / 2.2)
    assert found.sentence == (
        "Converging: the last phase (unfreeze_top_2, one epoch) gave the lowest validation loss, 0.2 at epoch 7 "
        "(9.1% below the phases before); whether more epochs help needs a longer last phase."
    )


def test_plateaued_when_nothing_improved_for_a_window() -> None:
    found = diagnose(_history([1.0, 0.5, 0.5, 0.5, 0.5], [1.0, 0.5, 0.501, 0.5005, 0.502]), num_classes=10)
    assert (found.verdict, found.epoch) == ("plateaued", 2)


def test_diverged_on_a_non_finite_loss_or_a_loss_far_above_its_best() -> None:
    assert diagnose(_history([1.0, math.nan], [1.0, 1.0]), num_classes=10).epoch == 2
    found = diagnose(_history([1.0, 0.5, 3.0, 9.0], [1.0, 0.5, 3.0, 9.0]), num_classes=10)
    assert (found.verdict, found.epoch) == ("diverged", 3)


def test_one_epoch_is_too_short_and_the_diagnosis_saves_as_json(tmp_path) -> None:
    found = diagnose(_history([1.0], [1.0]), num_classes=10)
    assert found.verdict == "too_short"
    found.save(tmp_path / "diagnosis.json")
    assert json.loads((tmp_path / "diagnosis.json").read_text()) == {
        "verdict": "too_short",
        "sentence": found.sentence,
        "epoch": None,
        "details": {},
    }


# Tiny runs: the same verdicts from real training, seeded.


def _blobs(count: int, seed: int, noise: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, count)
    centres = np.array([[1, 1], [-1, 1], [-1, -1], [1, -1]], np.float32) * 2
    inputs = centres[labels] + rng.normal(scale=noise, size=(count, 2))
    extra = rng.normal(size=(count, 14))  # distractors a big model can memorise
    return np.concatenate([inputs, extra], axis=1).astype("float32"), labels


def _train(model: keras.Model, train, val, *, epochs: int, learning_rate: float) -> TrainingHistory:
    model.compile(keras.optimizers.Adam(learning_rate), "sparse_categorical_crossentropy", metrics=["accuracy"])
    fitted = model.fit(*train, validation_data=val, epochs=epochs, batch_size=16, shuffle=False, verbose=0)
    keys = ("loss", "val_loss", "accuracy", "val_accuracy")
    return _history(*(fitted.history[key] for key in keys))


def _mlp(widths: list[int], seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    tensor = inputs = keras.Input((16,))
    for width in widths:
        tensor = keras.layers.Dense(width, activation="relu")(tensor)
    return keras.Model(inputs, keras.layers.Dense(4, activation="softmax")(tensor))


def test_a_tiny_set_trained_long_overfits_at_a_known_epoch() -> None:
    history = _train(
        _mlp([256, 256]), _blobs(24, 1, noise=1.5), _blobs(400, 2, noise=1.5), epochs=60, learning_rate=3e-3
    )
    found = diagnose(history, num_classes=4)
    val_loss = [row["val_loss"] for row in history.rows]
    assert (found.verdict, found.epoch) == ("overfitting", int(np.argmin(val_loss)) + 2)
    assert found.epoch == OVERFIT_EPOCH


def test_a_one_unit_bottleneck_underfits() -> None:
    history = _train(_mlp([1]), _blobs(400, 1), _blobs(200, 2), epochs=15, learning_rate=1e-2)
    found = diagnose(history, num_classes=4)
    # Underfitting is read from where training ended: both losses still high at the last epoch.
    assert (found.verdict, found.epoch) == ("underfitting", 15), found.sentence


def test_a_well_set_run_converges() -> None:
    history = _train(_mlp([8]), _blobs(800, 1), _blobs(400, 2), epochs=16, learning_rate=3e-3)
    found = diagnose(history, num_classes=4)
    assert (found.verdict, found.epoch) == ("converging", 16), found.sentence
