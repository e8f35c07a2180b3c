"""The LR range test: a short run with the LR growing exponentially, and the LRs it suggests.

Why: the course's advice for choosing a learning rate (Smith's LR range test, fastai's `lr_find`):
train from a tiny LR to a huge one over a few hundred steps, plot the loss against the LR, and pick
an LR where the loss still falls fast, well before it blows up. Keras has no LR finder, so this is
ours: `train_on_batch` steps the model one batch at a time at each LR, the model's weights are put
back afterwards, and two rules turn the curve into a suggestion:
- `steepest`: the LR where the smoothed loss falls fastest against log(LR);
- `valley`: the longest stretch over which the smoothed loss keeps falling, at two thirds of the way
  down it (past the steep start, short of the minimum where the LR is already too large).

This module's top imports no TensorFlow: params validation reads `SUGGESTION_RULES`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import keras
    import tensorflow as tf

SUGGESTION_RULES: tuple[str, ...] = ("valley", "steepest")
_MINIMUM_POINTS = 5


@dataclass(frozen=True)
class LRFinderResult:
    """The recorded sweep and its suggestions.

    Attributes:
        learning_rates: The LR of each step taken.
        losses: Each step's training loss (that batch's, before the update).
        smoothed_losses: Bias-corrected exponential moving average of `losses`.
        valley: LR suggested by the valley rule.
        steepest: LR suggested by the steepest-descent rule.
    """

    learning_rates: tuple[float, ...]
    losses: tuple[float, ...]
    smoothed_losses: tuple[float, ...]
    valley: float
    steepest: float

    def suggestion(self, rule: str) -> float:
        """The LR `rule` suggests.

        Raises:
            ValueError: `rule` is not one of `SUGGESTION_RULES`.
        """
        if rule not in SUGGESTION_RULES:
            raise ValueError(f"unknown suggestion rule {rule!r}; allowed: {', '.join(SUGGESTION_RULES)}")
        return self.valley if rule == "valley" else self.steepest

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready copy."""
        return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()}


def exponential_learning_rates(*, min_lr: float, max_lr: float, steps: int) -> list[float]:
    """`min_lr * (max_lr / min_lr) ** (i / (steps - 1))` for i in 0..steps-1."""
    if not 0 < min_lr < max_lr:
        raise ValueError(f"need 0 < min_lr < max_lr; received min_lr={min_lr}, max_lr={max_lr}")
    if steps < 2:
        raise ValueError(f"steps is {steps}; the sweep needs at least 2")
    return [min_lr * (max_lr / min_lr) ** (index / (steps - 1)) for index in range(steps)]


def smooth(losses: Sequence[float], *, beta: float) -> list[float]:
    """Exponential moving average with bias correction: avg_i / (1 - beta ** (i + 1))."""
    average = 0.0
    smoothed = []
    for index, loss in enumerate(losses):
        average = beta * average + (1 - beta) * loss
        smoothed.append(average / (1 - beta ** (index + 1)))
    return smoothed


def _check_curve(learning_rates: Sequence[float], smoothed_losses: Sequence[float]) -> None:
    if len(learning_rates) != len(smoothed_losses):
        raise ValueError(f"{len(learning_rates)} learning rates for {len(smoothed_losses)} losses")
    if len(learning_rates) < _MINIMUM_POINTS:
        raise ValueError(
            f"the sweep recorded {len(learning_rates)} steps before the loss diverged; at least {_MINIMUM_POINTS} "
            "are needed for a suggestion: lower lr_find.min_lr or raise lr_find.steps"
        )


def suggest_steepest(learning_rates: Sequence[float], smoothed_losses: Sequence[float]) -> float:
    """The LR where the smoothed loss falls fastest against log10(LR).

    The first tenth of the curve (where the average is still warming up) and its last point are left out.

    Raises:
        ValueError: Fewer than 5 points, or lengths that differ.
    """
    import numpy as np

    _check_curve(learning_rates, smoothed_losses)
    slopes = np.gradient(np.asarray(smoothed_losses, dtype=float), np.log10(np.asarray(learning_rates, dtype=float)))
    start = max(1, len(slopes) // 10)
    best = start + int(np.argmin(slopes[start:-1]))
    return float(learning_rates[best])


def suggest_valley(learning_rates: Sequence[float], smoothed_losses: Sequence[float]) -> float:
    """Two thirds of the way down the longest stretch over which the smoothed loss keeps falling.

    Raises:
        ValueError: Fewer than 5 points, or lengths that differ.
    """
    _check_curve(learning_rates, smoothed_losses)
    best_start, best_end = 0, 0
    start = 0
    for index in range(1, len(smoothed_losses)):
        if smoothed_losses[index] >= smoothed_losses[index - 1]:
            start = index
        elif index - start > best_end - best_start:
            best_start, best_end = start, index
    return float(learning_rates[best_start + round((best_end - best_start) * 2 / 3)])


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
) -> LRFinderResult:
    """Runs the LR range test on `model` and puts its weights back afterwards.

    The model is compiled with `make_optimizer`'s optimiser: compile it again before training it.

    Args:
        model: The model to probe (for the frozen phase: the head on cached features).
        data: Batched (inputs, labels); repeated when it has fewer batches than `steps`.
        make_optimizer: Builds the optimiser from a float learning rate (which Keras keeps in a variable).
        loss: The training loss.
        min_lr: LR of the first step.
        max_lr: LR of the last step.
        steps: Steps of the sweep.
        smoothing: beta of the loss's moving average.
        divergence: Stop once the smoothed loss exceeds this multiple of its best value, or is not finite.

    Returns:
        The curve and both suggestions.

    Raises:
        ValueError: Bad arguments, or a loss that diverged within the first 5 steps.
    """
    schedule = exponential_learning_rates(min_lr=min_lr, max_lr=max_lr, steps=steps)
    if not 0 <= smoothing < 1:
        raise ValueError(f"smoothing is {smoothing}; it must be in [0, 1)")
    if divergence <= 1:
        raise ValueError(f"divergence is {divergence}; it must be > 1")
    saved = model.get_weights()
    optimizer = make_optimizer(schedule[0])
    model.compile(optimizer=optimizer, loss=loss)
    learning_rates: list[float] = []
    losses: list[float] = []
    best = math.inf
    average = 0.0
    try:
        for learning_rate, (inputs, labels) in zip(schedule, data.repeat(), strict=False):
            optimizer.learning_rate = learning_rate
            learning_rates.append(float(optimizer.learning_rate))
            losses.append(float(model.train_on_batch(inputs, labels, return_dict=True)["loss"]))
            # The same average as `smooth`, kept as it goes.
            average = smoothing * average + (1 - smoothing) * losses[-1]
            current = average / (1 - smoothing ** len(losses))
            if not math.isfinite(current) or current > divergence * best:
                break
            best = min(best, current)
    finally:
        model.set_weights(saved)
    smoothed = smooth(losses, beta=smoothing)
    # A diverged last point (inf or NaN) would hide the curve's shape from both rules.
    while smoothed and not math.isfinite(smoothed[-1]):
        smoothed.pop()
        learning_rates.pop()
        losses.pop()
    return LRFinderResult(
        learning_rates=tuple(learning_rates),
        losses=tuple(losses),
        smoothed_losses=tuple(smoothed),
        valley=suggest_valley(learning_rates, smoothed),
        steepest=suggest_steepest(learning_rates, smoothed),
    )
