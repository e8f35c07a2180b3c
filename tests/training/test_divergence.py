"""The divergence rule: NaN or infinite losses, or a training loss above 3 x ln(classes)."""

from __future__ import annotations

import math

import pytest

from pipeline.training.divergence import TrainingDivergedError, check_epoch, loss_limit


def test_limit_is_three_times_the_loss_of_guessing_uniformly() -> None:
    assert loss_limit(10) == pytest.approx(3 * math.log(10))
    assert loss_limit(2) == pytest.approx(2.0794415416798357)
    with pytest.raises(ValueError, match="at least 2 classes, got 1"):
        loss_limit(1)


def test_a_loss_at_the_limit_is_no_divergence() -> None:
    # No error at the limit (a validation loss far above it is no divergence either) ...
    check_epoch({"loss": loss_limit(10), "val_loss": 50.0}, epoch=0, num_classes=10, phase="frozen")
    # ... and the next float above the limit is divergence: the boundary is exactly the limit.
    with pytest.raises(TrainingDivergedError, match=r"^training diverged in epoch 1 \(phase frozen\): loss 6\.90776 "):
        check_epoch({"loss": math.nextafter(loss_limit(10), math.inf)}, epoch=0, num_classes=10, phase="frozen")


def test_a_loss_above_the_limit_is_divergence() -> None:
    with pytest.raises(
        TrainingDivergedError,
        match=r"^training diverged in epoch 3 \(phase frozen, lr 10\): loss 70002 is above 6\.91, 3 x ln\(10 classes\) "
        r"\(guessing uniformly scores 2\.3\); lower train\.base_learning_rate",
    ):
        check_epoch({"loss": 70002.0, "lr": 10.0}, epoch=2, num_classes=10, phase="frozen")


@pytest.mark.parametrize(("key", "value", "shown"), [("loss", math.nan, "nan"), ("val_loss", math.inf, "inf")])
def test_a_non_finite_loss_is_divergence(key: str, value: float, shown: str) -> None:
    logs = {"loss": 0.5, "val_loss": 0.5, key: value}
    with pytest.raises(TrainingDivergedError, match=rf"^training diverged in epoch 1 \(phase top\): {key} is {shown};"):
        check_epoch(logs, epoch=0, num_classes=3, phase="top")
