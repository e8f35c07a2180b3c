"""How the LR range test's curve becomes a suggestion: the smoothed loss, and the two rules that read it.

Why apart from the sweep: the rules are pure functions of (learning rates, smoothed losses), tested on
curves made by hand, and params validation names them (`SUGGESTION_RULES`) before TensorFlow loads, so
this module imports numpy alone.
- `steepest`: the LR where the smoothed loss falls fastest against log(LR);
- `valley`: the longest stretch over which the smoothed loss keeps falling, two thirds of the way
  down it (past the flat start, short of the minimum, where the LR is already nearly too large).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

SUGGESTION_RULES: tuple[str, ...] = ("valley", "steepest")

# Fewer points leave no interior for the steepest rule once its ends are dropped.
MINIMUM_POINTS = 5


def smooth(losses: Sequence[float], *, beta: float) -> list[float]:
    """Exponential moving average with bias correction, as fastai's `lr_find` smooths its curve.

    `average_i = beta * average_(i-1) + (1 - beta) * loss_i` from `average_(-1) = 0`, and
    `smoothed_i = average_i / (1 - beta ** (i + 1))`.

    Why the correction: the average starts at 0, so without it the first points are pulled towards 0;
    with it `smoothed_0` is exactly `losses[0]`.

    Args:
        losses: The raw losses in step order.
        beta: The average's decay; 0 leaves the losses as they are.

    Returns:
        One smoothed value per loss. A non-finite loss makes every later value non-finite.

    Raises:
        ValueError: `beta` outside [0, 1).
    """
    if not 0 <= beta < 1:
        raise ValueError(f"beta must be in [0, 1); received {beta}")
    average = 0.0
    smoothed = []
    for index, loss in enumerate(losses):
        average = beta * average + (1 - beta) * loss
        smoothed.append(average / (1 - beta ** (index + 1)))
    return smoothed


def _finite_curve(learning_rates: Sequence[float], smoothed_losses: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """The curve up to (not including) its first non-finite loss, checked for a suggestion rule.

    Why cut there: a NaN or infinite loss means the training diverged; what follows it is no curve.

    Raises:
        ValueError: Lengths that differ, learning rates not positive and increasing, or fewer than
            `MINIMUM_POINTS` finite points before the first non-finite loss.
    """
    if len(learning_rates) != len(smoothed_losses):
        raise ValueError(
            f"learning_rates and smoothed_losses must have the same length; received {len(learning_rates)} "
            f"and {len(smoothed_losses)}"
        )
    rates = np.asarray(learning_rates, dtype=float)
    losses = np.asarray(smoothed_losses, dtype=float)
    if not (np.all(rates > 0) and np.all(np.diff(rates) > 0)):
        raise ValueError(f"learning_rates must be positive and increasing; received {list(learning_rates)}")
    non_finite = np.flatnonzero(~np.isfinite(losses))
    end = int(non_finite[0]) if non_finite.size else len(losses)
    if end < MINIMUM_POINTS:
        raise ValueError(
            f"smoothed_losses has {end} finite points before it ends or diverges; a suggestion needs at least "
            f"{MINIMUM_POINTS}"
        )
    return rates[:end], losses[:end]


def suggest_steepest(learning_rates: Sequence[float], smoothed_losses: Sequence[float]) -> float:
    """The LR where the smoothed loss falls fastest against log(LR).

    The slope is `numpy.gradient` of the loss over log(LR) (central differences inside the curve).
    The first `max(1, n // 10)` points are left out, where the moving average is still settling, and
    so is the last point, whose slope is one-sided. Ties go to the smaller LR. The curve ends at its
    first non-finite loss, which counts as divergence.

    Args:
        learning_rates: Positive, increasing LRs of the sweep.
        smoothed_losses: The smoothed loss at each of them.

    Returns:
        The learning rate of the most negative slope.

    Raises:
        ValueError: Fewer than `MINIMUM_POINTS` finite points, lengths that differ, learning rates
            not positive and increasing, or a loss that never falls between the points considered.
    """
    rates, losses = _finite_curve(learning_rates, smoothed_losses)
    slopes = np.gradient(losses, np.log(rates))
    start = max(1, len(slopes) // 10)
    best = start + int(np.argmin(slopes[start:-1]))
    if slopes[best] >= 0:
        raise ValueError(
            f"smoothed_losses never falls between LR {rates[start]:.3g} and {rates[-2]:.3g}; the steepest rule "
            "needs a falling stretch (start the sweep at a smaller min_lr)"
        )
    return float(rates[best])


def suggest_valley(learning_rates: Sequence[float], smoothed_losses: Sequence[float]) -> float:
    """Two thirds of the way down the longest stretch over which the smoothed loss keeps falling.

    A stretch runs from point `s` to point `e` when every point in it is strictly lower than the one
    before. The longest one wins (the first of equal length), and the suggestion is the point
    `s + round(2 * (e - s) / 3)`. The curve ends at its first non-finite loss, which counts as divergence.

    Why two thirds: the start of the stretch is where the LR first does something, its end is the
    minimum, where the LR is about to be too large; two thirds down is still well inside the fall.

    Args:
        learning_rates: Positive, increasing LRs of the sweep.
        smoothed_losses: The smoothed loss at each of them.

    Returns:
        The suggested learning rate.

    Raises:
        ValueError: Fewer than `MINIMUM_POINTS` finite points, lengths that differ, learning rates
            not positive and increasing, or a loss that never falls.
    """
    rates, losses = _finite_curve(learning_rates, smoothed_losses)
    best_start, best_end = 0, 0
    start = 0
    for index in range(1, len(losses)):
        if losses[index] >= losses[index - 1]:
            start = index
        elif index - start > best_end - best_start:
            best_start, best_end = start, index
    if best_end == best_start:
        raise ValueError("smoothed_losses never falls from one point to the next; the valley rule needs a fall")
    return float(rates[best_start + round(2 * (best_end - best_start) / 3)])
