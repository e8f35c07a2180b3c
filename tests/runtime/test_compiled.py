"""Tests of pipeline/runtime/compiled.py: what the compiled train step runs with, read from the model.

The expectations that depend on the machine come from it (a GPU or not), so the tests hold on both.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import keras
import pytest
import tensorflow as tf

from pipeline.runtime.compiled import CompiledSettings, compiled_settings

REPO_ROOT = Path(__file__).resolve().parents[2]
HAS_GPU = bool(tf.config.list_physical_devices("GPU"))


class _NoXla(keras.layers.Layer):
    """A layer that says it cannot be compiled with XLA (as a `TFSMLayer` does)."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.supports_jit = False

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        return inputs


def _compiled(jit_compile: bool | str, *, extra: keras.layers.Layer | None = None) -> keras.Model:
    layers = [keras.Input((3,)), *([extra] if extra is not None else []), keras.layers.Dense(2)]
    model = keras.Sequential(layers)
    model.compile(optimizer="sgd", loss="mse", jit_compile=jit_compile)
    return model


def _deterministic() -> bool:
    from tensorflow.python.framework.config import is_op_determinism_enabled

    return bool(is_op_determinism_enabled())


def test_false_is_off_everywhere() -> None:
    assert compiled_settings(_compiled(False), requested=False) == CompiledSettings(
        xla=False,
        xla_reason="device.jit_compile is false",
        precision="float32",
        replicas=1,
        strategy="_DefaultDistributionStrategy",
    )


def test_auto_is_what_keras_resolved_on_this_machine() -> None:
    settings = compiled_settings(_compiled("auto"), requested="auto")
    if not HAS_GPU:
        expected = (False, "auto: Keras turns XLA off on a machine without a GPU")
    elif _deterministic():
        expected = (
            False,
            "TensorFlow's deterministic ops are on (train.deterministic), which Keras does not combine with XLA",
        )
    else:
        expected = (True, "auto: a GPU, no distribution strategy")
    assert (settings.xla, settings.xla_reason) == expected


def test_a_layer_without_xla_turns_true_off_and_is_named() -> None:
    with pytest.warns(UserWarning, match="Model doesn't support `jit_compile=True`"):
        model = _compiled(True, extra=_NoXla(name="saved_model_layer"))
    settings = compiled_settings(model, requested=True)
    assert (settings.xla, settings.xla_reason) == (False, "layer saved_model_layer does not support XLA")


def test_as_tags() -> None:
    settings = CompiledSettings(
        xla=True,
        xla_reason="device.jit_compile is true",
        precision="mixed_float16",
        replicas=2,
        strategy="MirroredStrategy",
    )
    assert settings.as_tags() == {
        "device.xla": "true",
        "device.xla_reason": "device.jit_compile is true",
        "device.precision": "mixed_float16",
        "device.replicas": "2",
    }


def test_determinism_turns_xla_off_and_says_so() -> None:
    # In a process of its own: determinism is global to the process and cannot be turned off again.
    script = (
        "import json, keras, tensorflow as tf; from pipeline.runtime.compiled import compiled_settings\n"
        "tf.config.experimental.enable_op_determinism()\n"
        "model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])\n"
        "import warnings; warnings.simplefilter('ignore')\n"
        "model.compile(optimizer='sgd', loss='mse', jit_compile=True)\n"
        "s = compiled_settings(model, requested=True); print(json.dumps([s.xla, s.xla_reason, s.replicas]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=True
    )
    assert json.loads(result.stdout.splitlines()[-1]) == [
        False,
        "TensorFlow's deterministic ops are on (train.deterministic), which Keras does not combine with XLA",
        1,
    ]


def test_replicas_and_strategy_are_the_models() -> None:
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        model = _compiled("auto")
    settings = compiled_settings(model, requested="auto")
    assert (settings.replicas, settings.strategy) == (1, "MirroredStrategy")
    if HAS_GPU:
        assert settings.xla_reason == "auto: Keras turns XLA off under a tf.distribute strategy"
