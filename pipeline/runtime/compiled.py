"""What a compiled Keras model will really run with: XLA or not and why, its precision, its replicas.

Why read them from the model: `device.jit_compile: auto` is Keras' decision, made in `compile`: off on
machines without a GPU, off under any `tf.distribute` strategy, off when a layer does not support XLA or
TensorFlow's deterministic ops are on (Keras' `model_supports_jit`), and `jit_compile: true` is turned off
for the last two. The precision is the policy the layers were built under and the replicas are the
strategy's. A run tagged with the request would say what was asked, not what ran.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import tensorflow as tf


@dataclass(frozen=True)
class CompiledSettings:
    """The compiled train step's settings, as the model holds them.

    Attributes:
        xla: Whether the train step is compiled with XLA.
        xla_reason: Why, in words.
        precision: The model's dtype policy (`float32`, `mixed_float16`, `mixed_bfloat16`).
        replicas: Model replicas training in step (the distribution strategy's).
        strategy: The strategy's class name (`_DefaultDistributionStrategy` for none).
    """

    xla: bool
    xla_reason: str
    precision: str
    replicas: int
    strategy: str

    def as_tags(self) -> dict[str, str]:
        """The run's device tags that describe what ran."""
        return {
            "device.xla": str(self.xla).lower(),
            "device.xla_reason": self.xla_reason,
            "device.precision": self.precision,
            "device.replicas": str(self.replicas),
        }


def _op_determinism_enabled() -> bool:
    # TensorFlow has no public getter; Keras' own `model_supports_jit` reads this one.
    from tensorflow.python.framework.config import is_op_determinism_enabled

    return bool(is_op_determinism_enabled())


def _layers_without_xla(model: keras.Model) -> list[str]:
    """The layers, nested ones included, whose `supports_jit` is false (a `TFSMLayer`, for one)."""
    unsupported: set[str] = set()
    pending: list[keras.layers.Layer] = list(model.layers)
    while pending:
        layer = pending.pop()
        if not getattr(layer, "supports_jit", True):
            unsupported.add(layer.name)
        pending.extend(getattr(layer, "layers", []))
    return sorted(unsupported)


def xla_reason(model: keras.Model, *, requested: bool | str, xla: bool) -> str:
    """Why XLA is on or off for `model`, in Keras' own order of checks.

    Args:
        model: The compiled model.
        requested: What `compile` was given: "auto", True or False.
        xla: `model.jit_compile` after compile.

    Returns:
        One phrase.
    """
    if xla:
        return "device.jit_compile is true" if requested is True else "auto: a GPU, no distribution strategy"
    if requested is False:
        return "device.jit_compile is false"
    default_strategy = isinstance(model.distribute_strategy, type(tf.distribute.get_strategy()))
    if requested == "auto":
        if not [device for device in tf.config.list_physical_devices() if device.device_type != "CPU"]:
            return "auto: Keras turns XLA off on a machine without a GPU"
        if not default_strategy or model.distribute_strategy.num_replicas_in_sync > 1:
            return "auto: Keras turns XLA off under a tf.distribute strategy"
    unsupported = _layers_without_xla(model)
    if unsupported:
        return f"layer {', '.join(unsupported[:3])} does not support XLA"
    if _op_determinism_enabled():
        return "TensorFlow's deterministic ops are on (train.deterministic), which Keras does not combine with XLA"
    return "Keras turned it off"


def compiled_settings(model: keras.Model, *, requested: bool | str) -> CompiledSettings:
    """Reads what `model`'s compiled train step runs with; call after `compile`.

    Args:
        model: The compiled model.
        requested: What `compile` got as `jit_compile`.

    Returns:
        The settings in force.
    """
    xla = bool(model.jit_compile)
    strategy = model.distribute_strategy
    return CompiledSettings(
        xla=xla,
        xla_reason=xla_reason(model, requested=requested, xla=xla),
        precision=model.dtype_policy.name,
        replicas=int(strategy.num_replicas_in_sync),
        strategy=type(strategy).__name__,
    )
