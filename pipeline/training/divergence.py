"""When training has diverged, and the error that ends the run.

Why: a learning rate far too high (`base_learning_rate: 10` with SGD) drove the loss to 70,002, yet
the model still scored 0.16 on 10 classes and became champion of a fresh registry. A blown-up
optimiser must end the run FAILED before any model is written, with a message that says what to change.

The rule, checked at the end of every epoch (`pipeline.training.callbacks.DivergenceGuard`):
- the training or validation loss is NaN or infinite; or
- the training loss is above `DIVERGENCE_FACTOR` x ln(classes) and did not fall since the run's
  previous epoch. Guessing every class with the same probability scores ln(classes) (2.30 for 10
  classes), so an epoch averaging three times that put on average less than (1 / classes)^3 of the
  probability on the true class: the model learned worse than nothing, and a working optimiser does
  not stay there; or
- in the run's first epoch, which has no previous one, the training loss is above
  `FIRST_EPOCH_FACTOR` x ln(classes). A network trained from scratch (`backbone.reinitialize`) starts
  with large random logits: task B of the A -> B example, 2 classes, averaged 2.083 over its first
  epoch with `train.seed: 1` (the bound 3 x ln 2 is 2.079) and then learned normally; a blown-up
  optimiser is far above either bound (70,002 at `base_learning_rate: 10` with SGD).
Keras computes this pipeline's cross-entropy from the softmax's logits, so the loss of a blown-up model
is not capped.
Only the training loss is held to the bound: a validation loss may rise through overfitting, which
is no divergence (and the champion gate judges the test scores anyway).

Why per epoch and not per batch (Keras' `TerminateOnNaN`): a callback on every batch makes Keras wait
for each step's logs, which costs a GPU its pipelining; a NaN in any batch turns the epoch's mean loss
into NaN, so at most one epoch is spent before the run stops.

This module holds no TensorFlow import: `stages._entry` imports the error in every stage to report it
in one line.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from pipeline.errors import PipelineError

DIVERGENCE_FACTOR = 3.0
FIRST_EPOCH_FACTOR = 10.0


class TrainingDivergedError(PipelineError, RuntimeError):
    """The loss became NaN or infinite, or rose far above that of guessing uniformly."""


def loss_limit(num_classes: int, factor: float = DIVERGENCE_FACTOR) -> float:
    """The highest epoch training loss that is not divergence: `factor` x ln(classes).

    Args:
        num_classes: Number of classes, at least 2.
        factor: `DIVERGENCE_FACTOR` after the run's first epoch, `FIRST_EPOCH_FACTOR` on it.

    Returns:
        The bound (6.91 for 10 classes after the first epoch).

    Raises:
        ValueError: Fewer than 2 classes.
    """
    if num_classes < 2:
        raise ValueError(f"a classifier needs at least 2 classes, got {num_classes}")
    return factor * math.log(num_classes)


def check_epoch(
    logs: Mapping[str, float], *, epoch: int, num_classes: int, phase: str, previous_loss: float | None = None
) -> None:
    """Raises when an epoch's losses show divergence (see the module's rule).

    Args:
        logs: The epoch's Keras logs: `loss`, and `val_loss` and `lr` when present.
        epoch: Global epoch index (0-based; the message counts from 1).
        num_classes: Number of classes of the classifier.
        phase: Name of the phase the epoch belongs to.
        previous_loss: The training loss of the run's previous epoch; None for the run's first epoch.

    Raises:
        TrainingDivergedError: A loss is NaN or infinite; or the training loss exceeds `loss_limit` without
            falling since `previous_loss`, or, on the first epoch, exceeds `FIRST_EPOCH_FACTOR` x ln(classes).
    """
    factor = DIVERGENCE_FACTOR if previous_loss is not None else FIRST_EPOCH_FACTOR
    limit = loss_limit(num_classes, factor)
    learning_rate = f", lr {float(logs['lr']):g}" if "lr" in logs else ""
    where = f"training diverged in epoch {epoch + 1} (phase {phase}{learning_rate})"
    advice = "lower train.base_learning_rate (or the phase's lr_factor), or clip gradients (optimizer clipnorm)"
    for key in ("loss", "val_loss"):
        if key in logs and not math.isfinite(float(logs[key])):
            raise TrainingDivergedError(f"{where}: {key} is {float(logs[key])}; {advice}")
    loss = float(logs.get("loss", 0.0))
    if loss > limit and (previous_loss is None or loss >= previous_loss):
        since = "" if previous_loss is None else f" and did not fall from the previous epoch's {previous_loss:.6g}"
        raise TrainingDivergedError(
            f"{where}: loss {loss:.6g} is above {limit:.3g}, {factor:g} x ln({num_classes} classes) "
            f"(guessing uniformly scores {math.log(num_classes):.3g}){since}; {advice}"
        )
