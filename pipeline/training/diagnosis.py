"""A diagnosis of the training history, read as course text 002 teaches to read the curves.

Why: the loss and accuracy curves of train and validation tell whether a run converged, stalled,
overfitted, underfitted, stopped too soon or blew up; a user new to them should be told in one
sentence, with the epoch the plot should be looked at. This is a pure function of the history (one
global epoch axis across phases; early stopping with `restore_best` may end a phase on an earlier
epoch, and the epochs after it are still read), in the order below, the first that holds winning:

- diverged: a loss is not finite, or the last training loss is above twice its lowest and above the
  loss of guessing (ln of the number of classes);
- overfitting: the validation loss rose more than `tolerance` (relative) over its lowest for at least
  two epochs while the training loss kept falling; it started the epoch after the lowest;
- underfitting: both last losses above `underfit_loss` times the loss of guessing, with training
  accuracy within `ACCURACY_CLOSE` of validation accuracy (the model cannot even fit its training set);
- undertrained: the last epoch is the best and improved the validation loss by more than `tolerance`;
- plateaued: the validation loss has not improved for `window` epochs;
- converging: otherwise, the best epoch is recent and the improvements are getting small.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.runtime import atomic

if TYPE_CHECKING:
    from pipeline.training.history import TrainingHistory

VERDICTS = (
    "converging",
    "plateaued",
    "overfitting",
    "underfitting",
    "undertrained",
    "diverged",
    "too_short",
    "off",
)
# Training accuracy this close to validation accuracy (or below it) is "close": no generalisation gap.
ACCURACY_CLOSE = 0.05
# A diverged run's last training loss is above this many times its lowest.
DIVERGED_FACTOR = 2.0


@dataclass(frozen=True)
class Diagnosis:
    """What the curves say.

    Attributes:
        verdict: One of `VERDICTS` (`off`: the diagnosis was switched off, `too_short`: under 2 epochs).
        sentence: One sentence for the user (the run's `diagnosis` tag).
        epoch: The epoch (numbered from 1) the verdict points at, marked on the history plot; None if none.
        details: The numbers behind it (losses, gaps, best epoch), epochs numbered from 1.
    """

    verdict: str
    sentence: str
    epoch: int | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def save(self, path: Path) -> None:
        """Writes the diagnosis as JSON (`reports/diagnosis.json`)."""
        atomic.write_text(path, json.dumps(asdict(self), indent=2) + "\n")


def _column(history: TrainingHistory, key: str) -> list[float]:
    return [float(row.get(key, math.nan)) for row in history.rows]


def diagnose(
    history: TrainingHistory,
    *,
    num_classes: int,
    window: int = 3,
    tolerance: float = 0.01,
    underfit_loss: float = 0.5,
) -> Diagnosis:
    """Reads the history's curves (module docstring: the rules and their order).

    Args:
        history: Every epoch of every phase, with `loss`, `val_loss`, `accuracy`, `val_accuracy`.
        num_classes: Number of classes: ln of it is the loss of guessing uniformly.
        window: Epochs without improvement of the validation loss that make a plateau.
        tolerance: Relative change of the validation loss that counts (below it, flat).
        underfit_loss: Share of the loss of guessing above which both losses are "high".

    Returns:
        The diagnosis.
    """
    loss, val_loss = _column(history, "loss"), _column(history, "val_loss")
    accuracy, val_accuracy = _column(history, "accuracy"), _column(history, "val_accuracy")
    epochs = len(loss)
    if epochs < 2:
        return Diagnosis("too_short", f"{epochs} epoch(s): too few to read a trend from the curves.")
    guessing = math.log(num_classes)
    for index in range(epochs):
        if not (math.isfinite(loss[index]) and math.isfinite(val_loss[index])):
            return Diagnosis(
                "diverged",
                f"Diverged: the loss is not finite from epoch {index + 1}; lower the learning rate or clip gradients.",
                epoch=index + 1,
            )
    lowest_train = min(range(epochs), key=loss.__getitem__)
    if loss[-1] > DIVERGED_FACTOR * loss[lowest_train] and loss[-1] > guessing:
        return Diagnosis(
            "diverged",
            f"Diverged: the training loss rose from {loss[lowest_train]:.3g} at epoch {lowest_train + 1} to "
            f"{loss[-1]:.3g}, above guessing ({guessing:.3g}); lower the learning rate or clip gradients.",
            epoch=lowest_train + 2,
            details={"lowest_train_loss": loss[lowest_train], "last_train_loss": loss[-1]},
        )
    best = min(range(epochs), key=val_loss.__getitem__)
    gaps = {
        "best_epoch": best + 1,
        "best_val_loss": val_loss[best],
        "last_train_loss": loss[-1],
        "last_val_loss": val_loss[-1],
        "loss_gap": val_loss[-1] - loss[-1],
        "accuracy_gap": accuracy[-1] - val_accuracy[-1],
    }
    restored = [phase.best_epoch for phase in history.phases if phase.best_epoch is not None]
    if restored:
        gaps["restored_epoch"] = restored[-1] + 1
    rise = (val_loss[-1] - val_loss[best]) / val_loss[best] if val_loss[best] > 0 else 0.0
    if epochs - 1 - best >= 2 and rise > tolerance and loss[-1] < loss[best]:
        kept = f"; early stopping kept epoch {gaps['restored_epoch']}" if restored else ""
        return Diagnosis(
            "overfitting",
            f"Overfitting from epoch {best + 2}: validation loss rose {rise:.0%} from its lowest "
            f"({val_loss[best]:.3g} at epoch {best + 1}) while training loss fell to {loss[-1]:.3g} "
            f"(gap {gaps['loss_gap']:.3g} in loss, {gaps['accuracy_gap']:.1%} in accuracy){kept}.",
            epoch=best + 2,
            details={**gaps, "val_loss_rise": rise},
        )
    high = underfit_loss * guessing
    if loss[-1] > high and val_loss[-1] > high and gaps["accuracy_gap"] <= ACCURACY_CLOSE:
        return Diagnosis(
            "underfitting",
            f"Underfitting: both losses stay high (train {loss[-1]:.3g}, validation {val_loss[-1]:.3g}, "
            f"guessing {guessing:.3g}) with training accuracy {accuracy[-1]:.1%} close to validation "
            f"{val_accuracy[-1]:.1%}; give the model more capacity or train the backbone.",
            epoch=epochs,
            details=gaps,
        )
    previous_best = min(val_loss[:-1])
    improvement = (previous_best - val_loss[-1]) / previous_best if previous_best > 0 else 0.0
    # A phase's first epoch moves the loss by the change of phase (a lower LR, more blocks), which says
    # nothing of whether that phase needed more epochs: only a last phase of two or more epochs can tell.
    last_phase = history.phases[-1] if history.phases else None
    if last_phase is not None and last_phase.first_epoch == epochs - 1 and best == epochs - 1:
        return Diagnosis(
            "converging",
            f"Converging: the last phase ({last_phase.name}, one epoch) gave the lowest validation loss, "
            f"{val_loss[-1]:.3g} at epoch {epochs} ({improvement:.1%} below the phases before); whether more "
            "epochs help needs a longer last phase.",
            epoch=epochs,
            details={**gaps, "last_improvement": improvement},
        )
    if best == epochs - 1 and improvement > tolerance:
        return Diagnosis(
            "undertrained",
            f"Undertrained: validation loss still fell {improvement:.1%} at the last epoch ({epochs}); "
            "train for more epochs.",
            epoch=epochs,
            details={**gaps, "last_improvement": improvement},
        )
    if epochs - 1 - best >= window:
        return Diagnosis(
            "plateaued",
            f"Plateaued: no better validation loss since epoch {best + 1} ({epochs - 1 - best} epochs); "
            "a lower learning rate or a schedule may move it on.",
            epoch=best + 1,
            details=gaps,
        )
    return Diagnosis(
        "converging",
        f"Converging: validation loss {val_loss[best]:.3g} at epoch {best + 1}, improvements now under "
        f"{tolerance:.0%}, train/validation gap {gaps['loss_gap']:.3g}.",
        epoch=best + 1,
        details=gaps,
    )
