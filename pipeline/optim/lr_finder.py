"""The LR range test: a short run with the LR growing exponentially, and the LRs it suggests.

Why: the course's advice for choosing a learning rate (Smith's LR range test, fastai's `lr_find`):
train from a tiny LR to a huge one over a few hundred steps, plot the loss against the LR, and pick
an LR where the loss still falls fast, well before it blows up. Keras has no LR finder, so this is
ours, Keras-native: one `fit` call whose callback sets the optimiser's LR before every batch, records
the LR the optimiser held and that batch's loss, and stops training once the smoothed loss diverges.
The model's variables are put back afterwards, and two rules turn the curve into a suggestion
(`pipeline.optim.lr_suggestions`). `LRFindReport` is the lr_find stage's file of it all.

This module's top imports no Keras or TensorFlow (the sweep's callback class is made on first use), so
reading a report costs no TensorFlow start-up.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.optim.lr_suggestions import MINIMUM_POINTS, SUGGESTION_RULES, smooth, suggest_steepest, suggest_valley
from pipeline.runtime import atomic

if TYPE_CHECKING:
    import keras
    import tensorflow as tf


@dataclass(frozen=True)
class LRFinderResult:
    """The recorded sweep and its suggestions.

    Attributes:
        learning_rates: The LR the optimiser held at each step, in step order.
        losses: Each step's training loss (that batch's, computed before its update).
        smoothed_losses: Bias-corrected exponential moving average of `losses` (see `smooth`).
        valley: LR suggested by the valley rule (`suggest_valley`).
        steepest: LR suggested by the steepest-descent rule (`suggest_steepest`).
    """

    learning_rates: tuple[float, ...]
    losses: tuple[float, ...]
    smoothed_losses: tuple[float, ...]
    valley: float
    steepest: float

    def suggestion(self, rule: str) -> float:
        """The LR that `rule` suggests.

        Args:
            rule: One of `SUGGESTION_RULES`.

        Returns:
            The suggested learning rate.

        Raises:
            ValueError: `rule` is not one of `SUGGESTION_RULES`.
        """
        if rule not in SUGGESTION_RULES:
            raise ValueError(f"rule must be one of {', '.join(SUGGESTION_RULES)}; received {rule!r}")
        return self.valley if rule == "valley" else self.steepest

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready copy: tuples become lists (a sweep's numbers are all finite, so no NaN).

        Returns:
            The fields by name.
        """
        return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()}


@dataclass(frozen=True)
class LRFindReport:
    """`reports/lr_find.json`, which the lr_find stage writes and `train.base_learning_rate: auto` reads.

    Attributes:
        enabled: Whether the LR range test ran (`lr_find.enabled`); the rest is empty when it did not.
        rule: The suggestion rule the run chose (`lr_find.rule`).
        images: Training images the sweep drew from.
        cached_features: Whether the sweep ran on cached frozen features.
        result: The sweep and its suggestions.
    """

    enabled: bool
    rule: str | None = None
    images: int = 0
    cached_features: bool = False
    result: LRFinderResult | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON document: `enabled` alone when the test was off, else the rule, both suggestions, the sweep."""
        if not self.enabled or self.result is None or self.rule is None:
            return {"enabled": False}
        return {
            "enabled": True,
            "rule": self.rule,
            "suggested": self.result.suggestion(self.rule),
            "suggestions": {"valley": self.result.valley, "steepest": self.result.steepest},
            "images": self.images,
            "cached_features": self.cached_features,
            **self.result.to_dict(),
        }

    def write(self, path: Path) -> None:
        """Writes the document to `path` (its folder is made when missing)."""
        atomic.write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def read(cls, path: Path) -> LRFindReport:
        """Reads what `write` wrote."""
        document = json.loads(Path(path).read_text(encoding="utf-8"))
        if not document.get("enabled"):
            return cls(enabled=False)
        fields = {name: document[name] for name in ("learning_rates", "losses", "smoothed_losses")}
        result = LRFinderResult(
            **{name: tuple(float(value) for value in values) for name, values in fields.items()},
            valley=float(document["valley"]),
            steepest=float(document["steepest"]),
        )
        return cls(
            enabled=True,
            rule=str(document["rule"]),
            images=int(document["images"]),
            cached_features=bool(document["cached_features"]),
            result=result,
        )


def exponential_learning_rates(*, min_lr: float, max_lr: float, steps: int) -> list[float]:
    """The sweep's schedule: `min_lr * (max_lr / min_lr) ** (i / (steps - 1))` for i in 0..steps-1.

    Args:
        min_lr: LR of the first step.
        max_lr: LR of the last step.
        steps: Number of steps.

    Returns:
        `steps` learning rates from `min_lr` to `max_lr`, evenly spaced on a log scale.

    Raises:
        ValueError: `min_lr` or `max_lr` not finite with 0 < min_lr < max_lr, or `steps` below 2.
    """
    if not (math.isfinite(min_lr) and math.isfinite(max_lr) and 0 < min_lr < max_lr):
        raise ValueError(
            f"min_lr and max_lr must be finite with 0 < min_lr < max_lr; received min_lr={min_lr}, max_lr={max_lr}"
        )
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
        raise ValueError(f"steps must be an integer of at least 2; received {steps!r}")
    return [min_lr * (max_lr / min_lr) ** (index / (steps - 1)) for index in range(steps)]


@functools.cache
def _sweep_callback_class() -> type[keras.callbacks.Callback]:
    """The Keras callback class, defined on first use so that this module's top stays free of Keras."""
    import keras

    class LRSweep(keras.callbacks.Callback):
        """Sets the LR before each batch, records the LR used and the batch's loss, stops on divergence."""

        def __init__(self, schedule: Sequence[float], *, smoothing: float, divergence: float) -> None:
            super().__init__()
            self.schedule = schedule
            self.smoothing = smoothing
            self.divergence = divergence
            self.learning_rates: list[float] = []
            self.losses: list[float] = []
            self._average = 0.0
            self._best = math.inf

        def on_train_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
            self.model.optimizer.learning_rate = self.schedule[len(self.losses)]
            # Keras logs the running mean of the epoch's losses; emptying the tracker before each batch
            # makes the logged loss that batch's alone (as `train_on_batch` does).
            self.model.reset_metrics()

        def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
            # Read back from the optimiser's variable: the float32 value the step really used.
            self.learning_rates.append(float(self.model.optimizer.learning_rate))
            loss = float((logs or {})["loss"])
            self.losses.append(loss)
            self._average = self.smoothing * self._average + (1 - self.smoothing) * loss
            smoothed = self._average / (1 - self.smoothing ** len(self.losses))
            if not math.isfinite(smoothed) or smoothed > self.divergence * self._best:
                self.model.stop_training = True
            self._best = min(self._best, smoothed)

    return LRSweep


def lr_range_test(
    model: keras.Model,
    data: tf.data.Dataset,
    *,
    make_optimizer: Callable[[float], keras.optimizers.Optimizer],
    loss: str | keras.losses.Loss,
    min_lr: float = 1e-7,
    max_lr: float = 10.0,
    steps: int = 100,
    smoothing: float = 0.98,
    divergence: float = 4.0,
    jit_compile: bool | str = "auto",
) -> LRFinderResult:
    """Runs the LR range test on `model` and puts every variable of the model back afterwards.

    Step `i` (from 0) trains one batch at LR `min_lr * (max_lr / min_lr) ** (i / (steps - 1))`. The
    sweep stops early once the smoothed loss is NaN or infinite, or exceeds `divergence` times the
    lowest smoothed loss so far; a last step whose loss is not finite is left out of the result.

    The model's weights, BatchNormalization statistics and dropout random state are restored bit for
    bit, but the model stays compiled with the sweep's optimiser and loss: compile it again before
    training it.

    Args:
        model: The model to probe (for the frozen phase: the head on cached features).
        data: Batched `(inputs, labels)`; repeated when it has fewer batches than `steps`.
        make_optimizer: Builds the optimiser from a float learning rate (which Keras keeps in a
            variable, so that it can change between steps without retracing).
        loss: The training loss, as `compile` takes it. It must be positive for `divergence` to make sense.
        min_lr: LR of the first step.
        max_lr: LR of the last step.
        steps: Steps of the sweep, at least `MINIMUM_POINTS`.
        smoothing: `beta` of the loss's moving average (see `smooth`), in [0, 1).
        divergence: Stop once the smoothed loss exceeds this multiple of its lowest value; above 1.
        jit_compile: XLA compilation of the sweep's step, as the training phases get it.

    Returns:
        The curve and both suggestions.

    Raises:
        ValueError: An argument out of range, an optimiser whose LR cannot be set to a float, data
            with no batches, or a loss that diverged within the first `MINIMUM_POINTS` steps.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < MINIMUM_POINTS:
        raise ValueError(f"steps must be an integer of at least {MINIMUM_POINTS} for a suggestion; received {steps!r}")
    schedule = exponential_learning_rates(min_lr=min_lr, max_lr=max_lr, steps=steps)
    if not 0 <= smoothing < 1:
        raise ValueError(f"smoothing must be in [0, 1); received {smoothing}")
    if not (math.isfinite(divergence) and divergence > 1):
        raise ValueError(f"divergence must be a finite number above 1; received {divergence}")
    optimizer = make_optimizer(schedule[0])
    try:
        optimizer.learning_rate = schedule[0]
    except (TypeError, AttributeError) as error:
        raise ValueError(
            f"make_optimizer must build an optimiser with a float learning rate; received {type(optimizer).__name__} "
            f"with learning_rate {getattr(optimizer, '_learning_rate', None)!r} ({error})"
        ) from error

    saved = [(variable, np.array(variable.numpy(), copy=True)) for variable in model.variables]
    sweep = _sweep_callback_class()(schedule, smoothing=smoothing, divergence=divergence)
    # One step per execution: the callback must see every batch to set its LR.
    model.compile(optimizer=optimizer, loss=loss, steps_per_execution=1, jit_compile=jit_compile)
    try:
        model.fit(data.repeat(), epochs=1, steps_per_epoch=steps, shuffle=False, callbacks=[sweep], verbose=0)
    finally:
        for variable, value in saved:
            variable.assign(value)

    learning_rates, losses = sweep.learning_rates, sweep.losses
    if not losses:
        raise ValueError("data yielded no batches; the sweep needs at least one")
    smoothed = smooth(losses, beta=smoothing)
    if not math.isfinite(smoothed[-1]):
        # Only the step that stopped the sweep can be non-finite; NaN has no place in the JSON or the plot.
        learning_rates, losses, smoothed = learning_rates[:-1], losses[:-1], smoothed[:-1]
    if len(losses) < MINIMUM_POINTS:
        raise ValueError(
            f"the loss diverged after {len(sweep.losses)} of {steps} steps (min_lr={min_lr}, max_lr={max_lr}), "
            f"leaving {len(losses)} usable; a suggestion needs at least {MINIMUM_POINTS}: lower min_lr or raise steps"
        )
    return LRFinderResult(
        learning_rates=tuple(learning_rates),
        losses=tuple(losses),
        smoothed_losses=tuple(smoothed),
        valley=suggest_valley(learning_rates, smoothed),
        steepest=suggest_steepest(learning_rates, smoothed),
    )
