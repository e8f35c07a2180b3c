"""Training one phase under `tf.distribute.MultiWorkerMirroredStrategy`: Keras' own train step, our loop.

Why not `model.fit`: Keras 3's `fit` under MultiWorkerMirroredStrategy fails in its first epoch, measured
on this stack (TensorFlow 2.21, Keras 3.15, two workers on 127.0.0.1):
`ValueError: Attempt to convert a value (PerReplica:{...}) with an unsupported type (PerReplica) to a
Tensor`, raised where `fit` reduces the per-replica outputs of its train function (upstream keras#20585,
tensorflow#72388, both open; their workaround, `TF_USE_LEGACY_KERAS=1`, means Keras 2). What does work is
everything below that reduction: `strategy.run(model.train_step, ...)` runs Keras' own step on every
replica (the loss scaled for the replicas, loss scaling under mixed precision, the regularisation losses,
the gradients summed across replicas by the Keras optimiser, our layer-wise learning rates and gradient
norms), and the compiled metrics, read in cross-replica context, are the sums over every worker. This module
is the loop around it: epochs, steps, validation and the Keras callbacks' hooks, as `fit` calls them.

Every worker runs the same loop on its shard of each global batch (`tf.data` auto-sharding by data), so
each step's all-reduce keeps the trainable weights bit-identical, and every callback sees the same global
metrics and takes the same decision (early stopping, the plateau schedule, the divergence guard). Only the
chief may write or log (`pipeline.runtime.cluster`): the callbacks that do are given to the chief alone.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import keras
import tensorflow as tf


def needs_custom_loop(model: keras.Model) -> bool:
    """Whether `model` was built under a strategy whose `fit` fails here: MultiWorkerMirroredStrategy."""
    return isinstance(model.distribute_strategy, tf.distribute.MultiWorkerMirroredStrategy)


def _sharded(dataset: tf.data.Dataset) -> tf.data.Dataset:
    # Our datasets come from arrays, not files: sharding by file would fall back to data with a warning each time.
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def _read_metrics(model: keras.Model, prefix: str = "") -> dict[str, float]:
    return {f"{prefix}{name}": float(value) for name, value in model.get_metrics_result().items()}


def fit_with_strategy_run(
    model: keras.Model,
    dataset: tf.data.Dataset,
    *,
    validation_data: tf.data.Dataset | None,
    initial_epoch: int,
    epochs: int,
    steps_per_epoch: int,
    callbacks: Sequence[keras.callbacks.Callback],
    verbose: int = 0,
) -> None:
    """`model.fit(dataset, validation_data=..., initial_epoch=..., epochs=..., steps_per_epoch=...)` for MWMS.

    The callbacks get `fit`'s hooks in `fit`'s order: train begin, then per epoch its begin, each batch's
    begin and end (with empty logs: reading the metrics each step would cost an all-reduce), and its end with
    `loss`, the compiled metrics and their `val_` counterparts, all over the global batch; then train end.
    `model.stop_training` set by a callback ends the loop after that epoch, as in `fit`.

    Args:
        model: A compiled model built under the strategy.
        dataset: Training batches of the global batch size, epoch after epoch (`PhaseData.train`).
        validation_data: Validation batches, or None.
        initial_epoch: The first epoch's global index.
        epochs: The epoch after the last (exclusive), on the same axis.
        steps_per_epoch: Batches of one epoch.
        callbacks: The callbacks, in order.
        verbose: 0 silent; otherwise one line per epoch with its logs, like `fit`'s `verbose=2`.
    """
    strategy = model.distribute_strategy
    with strategy.scope():
        # Keras builds the optimiser's slots on the first step; in replica context that would create variables
        # there, which the strategy refuses.
        if not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
    batches = iter(strategy.experimental_distribute_dataset(_sharded(dataset)))
    validation = strategy.experimental_distribute_dataset(_sharded(validation_data)) if validation_data else None

    @tf.function
    def train_step(iterator: Any) -> None:
        strategy.run(model.train_step, args=(next(iterator),))

    @tf.function
    def test_step(batch: Any) -> None:
        strategy.run(model.test_step, args=(batch,))

    hooks = keras.callbacks.CallbackList(list(callbacks), model=model, epochs=epochs, steps=steps_per_epoch)
    model.stop_training = False
    hooks.on_train_begin()
    for epoch in range(initial_epoch, epochs):
        model.reset_metrics()
        hooks.on_epoch_begin(epoch)
        for step in range(steps_per_epoch):
            hooks.on_train_batch_begin(step)
            train_step(batches)
            hooks.on_train_batch_end(step, {})
        logs = _read_metrics(model)
        if validation is not None:
            model.reset_metrics()
            for batch in validation:
                test_step(batch)
            logs.update(_read_metrics(model, prefix="val_"))
        hooks.on_epoch_end(epoch, logs)
        if verbose:
            print(f"Epoch {epoch + 1}/{epochs} - " + " - ".join(f"{key}: {value:.4f}" for key, value in logs.items()))
        if model.stop_training:
            break
    hooks.on_train_end()


def weights_digest(model: keras.Model) -> str:
    """SHA-256 of `model`'s weights (names, shapes, dtypes, values, in order), BatchNorm moving statistics aside.

    Why: the chief tags it and every other worker prints it, so that a user (and the two-worker test) can see
    that the workers ended with bit-identical weights without any of them writing a model. The moving
    statistics are left out because each replica updates them from its own share of the batch, in a phase that
    trains BatchNorm (`bn_policy: trainable`, a head with `batch_norm`): they differ between workers by
    design, and the chief's are the ones saved.
    """
    digest = hashlib.sha256()
    for weight in model.weights:
        if weight.path.endswith(("moving_mean", "moving_variance")):
            continue
        value = keras.ops.convert_to_numpy(weight)
        digest.update(f"{weight.path}:{value.shape}:{value.dtype}".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()
