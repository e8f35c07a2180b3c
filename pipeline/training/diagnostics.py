"""The course's diagnostics while training: gradient norms per block, vanishing and exploding gradients, dead ReLUs.

Why: course texts 001 and 003 teach the user to watch for gradients that vanish in the lower layers
or explode, and for ReLU units that died (their gradient is 0 for ever). Every run measures them:

- the gradient norm of each trainable block (the backbone's blocks, `head`), from the gradients the
  training step already computed (`pipeline.optim.gradient_norms`), logged as `grad_norm/<block>`
  with `grad_norm_ratio`, the lowest block's norm over the highest's;
- the share of the head's ReLU units that output 0 on every image of a fixed probe set of validation
  inputs (the cached features of those images when the phase trains on the feature cache), logged as
  `dead_relu_fraction`.

Each flag is raised once, at the first epoch it happens, with one printed line naming the course's
remedy; the train stage turns the flags into run tags. The thresholds are the `diagnostics` section's.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import keras
import numpy as np

from pipeline.optim.gradient_norms import accumulating_optimizer, variable_blocks
from pipeline.training.features import traced_inference

if TYPE_CHECKING:
    import tensorflow as tf

    from pipeline.backbones.base import BlockGroup
    from pipeline.params.diagnostics import DiagnosticsParams

# The course's remedy for each flag (texts 001 and 003).
REMEDIES: dict[str, str] = {
    "vanishing_gradients": (
        "He initialisation (head.initializer: auto or he_normal) with a non-saturating activation "
        "(relu, leaky_relu), or BatchNorm"
    ),
    "exploding_gradients": (
        "a lower LR (train.base_learning_rate), or gradient clipping (train.optimizer.clipnorm: 1.0)"
    ),
    "dead_relus": "LeakyReLU (head.activation: leaky_relu), or a lower LR",
}
# Only the head's layers are probed: the backbone is pretrained, and its activations are not ours to change.
HEAD_LAYER_PREFIX = "head_"


@dataclass(frozen=True)
class DiagnosticFlag:
    """A problem the course names, at the first epoch it showed.

    Attributes:
        name: `vanishing_gradients`, `exploding_gradients` or `dead_relus`.
        epoch: The global epoch, from 0 (as Keras counts).
        detail: What was measured against which threshold, e.g. "ratio 2.1e-06 < 1e-05".
    """

    name: str
    epoch: int
    detail: str

    @property
    def remedy(self) -> str:
        return REMEDIES[self.name]

    def tag(self) -> tuple[str, str]:
        """The run tag: `diagnostics.<name>` -> "epoch <n> (<detail>)", epochs numbered from 1."""
        return f"diagnostics.{self.name}", f"epoch {self.epoch + 1} ({self.detail})"

    def line(self) -> str:
        """One line for the user, with the remedy."""
        name = self.name.replace("_", " ")
        return f"diagnostics: {name} at epoch {self.epoch + 1} ({self.detail}); try {self.remedy}"


def dead_fraction(outputs: Sequence[np.ndarray]) -> float:
    """The share of units that are 0 (or below) on every example.

    Args:
        outputs: Each probed layer's output, examples on the first axis and units on the last
            (any axes between are positions of the same unit, which is dead only if dead at every one).

    Returns:
        Dead units / all units of all the layers; 0 when there are none.
    """
    dead = total = 0
    for output in outputs:
        alive = np.asarray(output).reshape(-1, np.asarray(output).shape[-1]) > 0
        dead += int(np.sum(~alive.any(axis=0)))
        total += alive.shape[-1]
    return dead / total if total else 0.0


def relu_layers(model: keras.Model) -> list[keras.Layer]:
    """The head's layers whose units output exactly 0 for a negative input: ReLU, the ones that can die.

    LeakyReLU, PReLU and ELU keep a gradient below 0 (the course's remedy), so they are not probed.
    """
    found = []
    for layer in model.layers:
        if not layer.name.startswith(HEAD_LAYER_PREFIX):
            continue
        plain_relu = isinstance(layer, keras.layers.ReLU) and not layer.negative_slope
        relu_activation = isinstance(layer, keras.layers.Activation) and (
            getattr(layer.activation, "__name__", "") == "relu"
        )
        if plain_relu or relu_activation:
            found.append(layer)
    return found


def _output_in(model: keras.Model, layer: keras.Layer) -> keras.KerasTensor:
    """The layer's output in `model`'s own graph.

    Why not `layer.output`: a model cut from the classifier at a frozen tensor (a cached-feature phase)
    calls the head's layers again on a clone of that tensor, so each of them has one output per model
    and `layer.output` is the classifier's, which the cut model's input does not reach.
    """
    for node in reversed(layer._inbound_nodes):
        try:
            keras.Model(model.input, node.output_tensors[0])
        except ValueError:
            continue
        return node.output_tensors[0]
    raise ValueError(f"layer {layer.name!r} has no output that the input of model {model.name!r} reaches")


def probe_inputs(dataset: tf.data.Dataset, images: int) -> np.ndarray:
    """The first `images` inputs of an unshuffled dataset of (inputs, labels) batches: the same every epoch."""
    batches, count = [], 0
    for batch in dataset:
        batches.append(np.asarray(batch[0]))
        count += len(batches[-1])
        if count >= images:
            break
    return np.concatenate(batches)[:images]


@dataclass
class TrainingDiagnostics:
    """The diagnostics of one training run: its settings and the flags raised so far, across phases.

    Give it to `pipeline.training.recipe.fine_tune` (`diagnostics=`): each phase's optimiser then
    accumulates block gradient norms, and its callbacks run first in each phase's callback list, so
    the metrics they add reach the history and the tracking run with the epoch's others.

    Attributes:
        params: The validated `diagnostics` section.
        flags: Flag name -> the flag, at the first epoch it showed.
        print_line: Where the flags' lines go.
    """

    params: DiagnosticsParams
    flags: dict[str, DiagnosticFlag] = field(default_factory=dict)
    print_line: Callable[[str], None] = print

    def variable_blocks(self, model: keras.Model, blocks: Sequence[BlockGroup]) -> dict[str, str] | None:
        """Variable path -> block of the phase's model, for `make_optimizer`; None when norms are off."""
        if not self.params.gradient_norms:
            return None
        return variable_blocks(model, {group.name: group.layer_names for group in blocks})

    def callbacks(self, model: keras.Model, val: tf.data.Dataset) -> list[keras.callbacks.Callback]:
        """The phase's diagnostic callbacks, the probe's inputs taken from its validation data.

        Args:
            model: The model the phase fits (head-only under the feature cache).
            val: The phase's validation data, unshuffled (images, or their cached features).

        Returns:
            The callbacks to run first in the phase's `fit`.
        """
        found: list[keras.callbacks.Callback] = []
        if self.params.gradient_norms:
            found.append(GradientNormMonitor(self))
        layers = relu_layers(model) if self.params.dead_relus else []
        if layers:
            probe = keras.Model(model.input, [_output_in(model, layer) for layer in layers])
            found.append(DeadReluMonitor(self, probe, probe_inputs(val, self.params.probe_images)))
        return found

    def raise_flag(self, name: str, *, epoch: int, detail: str) -> None:
        """Records the flag at its first epoch and prints its line; later epochs of the same flag are ignored."""
        if name in self.flags:
            return
        self.flags[name] = DiagnosticFlag(name=name, epoch=epoch, detail=detail)
        self.print_line(self.flags[name].line())

    def restore_flags(self, flags: dict[str, dict[str, Any]]) -> None:
        """Takes back the flags a checkpoint saved (a resumed run), without printing their lines again."""
        for name, flag in flags.items():
            self.flags[name] = DiagnosticFlag(name=name, epoch=int(flag["epoch"]), detail=str(flag["detail"]))

    def tags(self) -> dict[str, str]:
        """The flags as run tags (none when nothing was flagged)."""
        return dict(flag.tag() for flag in self.flags.values())


class GradientNormMonitor(keras.callbacks.Callback):
    """At each epoch's end: reads the block gradient norms into `logs`, flags vanishing or exploding gradients."""

    def __init__(self, diagnostics: TrainingDiagnostics) -> None:
        super().__init__()
        self._diagnostics = diagnostics

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        optimizer = accumulating_optimizer(self.model.optimizer)
        if optimizer is None:
            return
        norms = optimizer.read_gradient_norms()
        logs = logs if logs is not None else {}
        check_norms(norms, epoch=epoch, diagnostics=self._diagnostics, logs=logs)


def check_norms(
    norms: Mapping[str, tuple[float, float]], *, epoch: int, diagnostics: TrainingDiagnostics, logs: dict[str, Any]
) -> None:
    """Puts `grad_norm/<block>` (and `grad_norm_ratio`) into `logs` and raises the gradient flags.

    Args:
        norms: Block -> (mean norm per step, largest norm of a step) over the epoch.
        epoch: The global epoch, from 0.
        diagnostics: Where the settings are and the flags go.
        logs: The epoch's logs, completed in place.
    """
    params = diagnostics.params
    for block, (mean, _) in norms.items():
        logs[f"grad_norm/{block}"] = mean
    for block, (mean, largest) in norms.items():
        if not (math.isfinite(mean) and math.isfinite(largest)):
            diagnostics.raise_flag("exploding_gradients", epoch=epoch, detail=f"{block} norm not finite")
        elif largest > params.exploding_norm:
            diagnostics.raise_flag(
                "exploding_gradients", epoch=epoch, detail=f"{block} norm {largest:.3g} > {params.exploding_norm:g}"
            )
    means = [mean for mean, _ in norms.values() if math.isfinite(mean)]
    if len(means) >= 2 and max(means) > 0:
        ratio = min(means) / max(means)
        logs["grad_norm_ratio"] = ratio
        if ratio < params.vanishing_ratio:
            lowest = min(norms, key=lambda block: norms[block][0])
            diagnostics.raise_flag(
                "vanishing_gradients",
                epoch=epoch,
                detail=f"ratio {ratio:.2g} < {params.vanishing_ratio:g}, lowest {lowest}",
            )


class DeadReluMonitor(keras.callbacks.Callback):
    """At each epoch's end: the share of the head's ReLU units dead on the probe inputs, and its flag."""

    def __init__(self, diagnostics: TrainingDiagnostics, probe: keras.Model, inputs: np.ndarray) -> None:
        super().__init__()
        self._diagnostics = diagnostics
        self._inputs = inputs
        # Not `probe.predict`: each phase has its own probe (see `traced_inference`).
        self._forward = traced_inference(probe)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        starts = range(0, len(self._inputs), 64)
        batches = [_as_list(self._forward(self._inputs[start : start + 64])) for start in starts]
        # One array per probed layer: its outputs of every batch, in order.
        outputs = [
            np.concatenate([keras.ops.convert_to_numpy(output) for output in layer])
            for layer in zip(*batches, strict=True)
        ]
        fraction = dead_fraction(outputs)
        if logs is not None:
            logs["dead_relu_fraction"] = fraction
        threshold = self._diagnostics.params.dead_relu_fraction
        if fraction > threshold:
            self._diagnostics.raise_flag(
                "dead_relus", epoch=epoch, detail=f"{fraction:.3g} of the head's ReLU units dead > {threshold:g}"
            )


def _as_list(outputs: Any) -> list[Any]:
    """A model's outputs as a list: one tensor for a single-output model, its list (or tuple) otherwise."""
    return list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]
