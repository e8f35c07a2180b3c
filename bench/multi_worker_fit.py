"""Keras' `model.fit` against our loop under MultiWorkerMirroredStrategy, two CPU workers on 127.0.0.1.

What it shows: whether `fit` trains under the strategy on this stack (on TensorFlow 2.21 / Keras 3.15 it fails
in its first epoch, docs/training.md#several-workers), and that `pipeline.training.distributed
.fit_with_strategy_run` does, with both workers' weights bit-identical and the loss of a single process on the
global batch. Also the wall time of each, side by side.

    .venv/bin/python bench/multi_worker_fit.py
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EPOCHS = 3
GLOBAL_BATCH = 16


def _worker(engine: str, index: int, addresses: list[str]) -> None:
    """One process: trains the same tiny model with `engine` (fit, loop, or single: one process, fit)."""
    if engine != "single":
        os.environ["TF_CONFIG"] = json.dumps(
            {"cluster": {"worker": addresses}, "task": {"type": "worker", "index": index}}
        )
    import keras
    import numpy as np
    import tensorflow as tf

    from pipeline.training.distributed import fit_with_strategy_run, weights_digest

    strategy = tf.distribute.MultiWorkerMirroredStrategy() if engine != "single" else tf.distribute.get_strategy()
    keras.utils.set_random_seed(0)
    features = np.random.default_rng(0).normal(size=(256, 8)).astype("float32")
    labels = (features[:, 0] + features[:, 1] > 0).astype("int64")
    with strategy.scope():
        model = keras.Sequential(
            [keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(2, activation="softmax")]
        )
        model.compile(keras.optimizers.SGD(0.1), "sparse_categorical_crossentropy", metrics=["accuracy"])
    dataset = tf.data.Dataset.from_tensor_slices((features, labels)).batch(GLOBAL_BATCH).repeat(EPOCHS)
    steps = len(features) // GLOBAL_BATCH
    started = time.perf_counter()
    losses: list[float] = []

    class _Losses(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            losses.append(float((logs or {})["loss"]))

    result: dict[str, object] = {"engine": engine, "index": index}
    try:
        if engine == "loop":
            fit_with_strategy_run(
                model,
                dataset,
                validation_data=None,
                initial_epoch=0,
                epochs=EPOCHS,
                steps_per_epoch=steps,
                callbacks=[_Losses()],
            )
        else:
            model.fit(dataset, epochs=EPOCHS, steps_per_epoch=steps, callbacks=[_Losses()], verbose=0)
        result.update(losses=losses, digest=weights_digest(model))
    except Exception as error:  # the finding is the error itself
        result["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:160]}"
    result["seconds"] = time.perf_counter() - started
    print("RESULT " + json.dumps(result), flush=True)


def free_ports(count: int) -> list[int]:
    """`count` TCP ports on 127.0.0.1 free now (for the workers' TF_CONFIG; also the two-worker test's)."""
    sockets = [socket.socket() for _ in range(count)]
    for handle in sockets:
        handle.bind(("127.0.0.1", 0))
    ports = [handle.getsockname()[1] for handle in sockets]
    for handle in sockets:
        handle.close()
    return ports


def _run(engine: str) -> list[dict[str, object]]:
    addresses = [f"127.0.0.1:{port}" for port in free_ports(2)]
    environment = {**os.environ, "CUDA_VISIBLE_DEVICES": "-1", "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(REPO)}
    indices = [0] if engine == "single" else [0, 1]
    processes = [
        subprocess.Popen(
            [sys.executable, __file__, "--worker", engine, str(index), ",".join(addresses)],
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        for index in indices
    ]
    results = []
    for process in processes:
        output, _ = process.communicate(timeout=600)
        lines = [line for line in output.splitlines() if line.startswith("RESULT ")]
        results.append(json.loads(lines[-1].removeprefix("RESULT ")) if lines else {"error": "no result"})
    return results


def main() -> None:
    single = _run("single")[0]
    print(f"single process, fit: losses {single['losses']}, {single['seconds']:.1f} s")
    for engine in ("fit", "loop"):
        results = _run(engine)
        errors = [result.get("error") for result in results if result.get("error")]
        if errors:
            print(f"2 workers, {engine}: FAILS: {errors[0]}")
            continue
        equal = results[0]["digest"] == results[1]["digest"]
        gap = max(abs(a - b) for a, b in zip(results[0]["losses"], single["losses"], strict=True))
        print(
            f"2 workers, {engine}: trains; weights bit-identical across workers: {equal}; losses {results[0]['losses']}"
            f" (largest difference to the single process {gap:.2e}); {max(r['seconds'] for r in results):.1f} s"
        )


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--worker":
        _worker(sys.argv[2], int(sys.argv[3]), sys.argv[4].split(","))
    else:
        main()
