"""Shared helpers of the tracking tests: a SQLite store per test, a tiny Keras model, a tracked run on it.

The imports of keras and pipeline.tracking sit inside the helpers, so the store and provenance tests, which
need neither, do not load them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

CLASSES = ("a", "b", "c")


@pytest.fixture
def store(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def tiny_model():
    """A 4-input, 3-class softmax model with seed-0 weights."""
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,), name="pixels")
    return keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(inputs))


def open_run(store: str, tmp_path: Path, **kwargs):
    """`lifecycle.tracked_run` on `store`, experiment `tests`, artifacts under `tmp_path`."""
    from pipeline.tracking import lifecycle

    return lifecycle.tracked_run(tracking_uri=store, experiment="tests", artifact_dir=tmp_path / "artifacts", **kwargs)
