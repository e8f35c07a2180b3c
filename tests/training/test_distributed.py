"""Tests of pipeline/training/distributed.py: the loop around Keras' train step, in one process.

Several workers are tested end to end in tests/stages/test_multi_worker.py; here the loop runs under a one-CPU
MirroredStrategy, where it must train exactly as `model.fit` does and call the callbacks' hooks as it does.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from pipeline.training.distributed import fit_with_strategy_run, needs_custom_loop, weights_digest

FEATURES = np.random.default_rng(0).normal(size=(48, 4)).astype("float32")
LABELS = (FEATURES[:, 0] > 0).astype("int64")


def _model() -> keras.Model:
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(2)])
    model.compile(
        keras.optimizers.SGD(0.1),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        jit_compile=False,
    )
    return model


class _Hooks(keras.callbacks.Callback):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []
        self.logs: list[dict[str, float]] = []

    def on_train_begin(self, logs: object = None) -> None:
        self.calls.append("train_begin")

    def on_epoch_begin(self, epoch: int, logs: object = None) -> None:
        self.calls.append(f"epoch_begin {epoch}")

    def on_train_batch_end(self, batch: int, logs: object = None) -> None:
        self.calls.append(f"batch {batch}")

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        self.calls.append(f"epoch_end {epoch}")
        self.logs.append({key: float(value) for key, value in (logs or {}).items()})
        if epoch == 3:
            self.model.stop_training = True

    def on_train_end(self, logs: object = None) -> None:
        self.calls.append("train_end")


def _data() -> tuple[tf.data.Dataset, tf.data.Dataset]:
    train = tf.data.Dataset.from_tensor_slices((FEATURES, LABELS)).batch(16).repeat()
    return train, tf.data.Dataset.from_tensor_slices((FEATURES[:20], LABELS[:20])).batch(16)


def test_the_loop_trains_as_fit_does_and_calls_the_hooks_in_order() -> None:
    train, val = _data()
    fitted, fitted_hooks = _model(), _Hooks()
    fitted.fit(
        train,
        validation_data=val,
        initial_epoch=2,
        epochs=6,
        steps_per_epoch=3,
        callbacks=[fitted_hooks],
        verbose=0,
        shuffle=False,
    )
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        looped = _model()
    assert needs_custom_loop(looped) is False  # one machine: fit works
    hooks = _Hooks()
    fit_with_strategy_run(
        looped, train, validation_data=val, initial_epoch=2, epochs=6, steps_per_epoch=3, callbacks=[hooks]
    )
    # Stopped by the callback after epoch 3, as fit was.
    assert hooks.calls == [
        "train_begin",
        "epoch_begin 2",
        "batch 0",
        "batch 1",
        "batch 2",
        "epoch_end 2",
        "epoch_begin 3",
        "batch 0",
        "batch 1",
        "batch 2",
        "epoch_end 3",
        "train_end",
    ]
    assert [sorted(logs) for logs in hooks.logs] == [["accuracy", "loss", "val_accuracy", "val_loss"]] * 2
    for mine, theirs in zip(hooks.logs, fitted_hooks.logs, strict=True):
        assert mine == pytest.approx({key: theirs[key] for key in mine}, rel=1e-6)
    for mine, theirs in zip(looped.get_weights(), fitted.get_weights(), strict=True):
        np.testing.assert_allclose(mine, theirs, rtol=1e-6, atol=1e-7)


def test_the_weights_digest_follows_every_weight_but_batchnorm_statistics() -> None:
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8), keras.layers.BatchNormalization()])
    digest = weights_digest(model)
    assert digest == weights_digest(model) and len(digest) == 64
    # Each worker's own in a phase that trains BatchNorm: not part of the digest.
    model.layers[1].moving_mean.assign(np.ones(8, dtype="float32"))
    assert weights_digest(model) == digest
    kernel = model.layers[0].kernel
    kernel.assign(kernel + np.float32(1e-7) * np.eye(4, 8, dtype="float32"))
    assert weights_digest(model) != digest
