"""The divergence rule: NaN or infinite losses, or a training loss above 3 x ln(classes) that does not fall
(10 x ln(classes) in the run's first epoch)."""

from __future__ import annotations

import math

import pytest

from pipeline.training.callbacks import DivergenceGuard
from pipeline.training.divergence import TrainingDivergedError, check_epoch, loss_limit


def test_limit_is_three_times_the_loss_of_guessing_uniformly() -> None:
    assert loss_limit(10) == pytest.approx(3 * math.log(10))
    assert loss_limit(2) == pytest.approx(2.0794415416798357)
    with pytest.raises(ValueError, match="at least 2 classes, got 1"):
        loss_limit(1)


def test_a_loss_at_the_limit_is_no_divergence() -> None:
    # No error at the limit (a validation loss far above it is no divergence either) ...
    check_epoch({"loss": loss_limit(10), "val_loss": 50.0}, epoch=1, num_classes=10, phase="frozen", previous_loss=7.0)
    # ... and the next float above the limit, not below the previous epoch's, is divergence: the boundary is exactly
    # the limit.
    above = math.nextafter(loss_limit(10), math.inf)
    with pytest.raises(
        TrainingDivergedError,
        match=r"^training diverged in epoch 2 \(phase frozen\): loss 6\.90776 is above 6\.91, 3 x ln\(10 classes\) "
        r"\(guessing uniformly scores 2\.3\) and did not fall from the previous epoch's 6\.90776;",
    ):
        check_epoch({"loss": above}, epoch=1, num_classes=10, phase="frozen", previous_loss=above)


def test_a_loss_above_the_limit_is_divergence() -> None:
    with pytest.raises(
        TrainingDivergedError,
        match=r"^training diverged in epoch 3 \(phase frozen, lr 10\): loss 70002 is above 6\.91, 3 x ln\(10 classes\) "
        r"\(guessing uniformly scores 2\.3\) and did not fall from the previous epoch's 500; lower "
        r"train\.base_learning_rate",
    ):
        check_epoch({"loss": 70002.0, "lr": 10.0}, epoch=2, num_classes=10, phase="frozen", previous_loss=500.0)


def test_a_high_loss_that_falls_is_no_divergence() -> None:
    # Above 3 x ln(2) = 2.079, but below the epoch before: a network from scratch on its way down.
    check_epoch({"loss": 2.5}, epoch=1, num_classes=2, phase="frozen", previous_loss=3.0)


def test_the_first_epoch_is_held_to_ten_times_guessing() -> None:
    # The A -> B example's scratch arm (2 classes, seed 1) averaged 2.083 over its first epoch, then learned.
    check_epoch({"loss": 2.08323}, epoch=0, num_classes=2, phase="frozen")
    check_epoch({"loss": 10 * math.log(2)}, epoch=0, num_classes=2, phase="frozen")
    with pytest.raises(
        TrainingDivergedError,
        match=r"^training diverged in epoch 1 \(phase frozen, lr 10\): loss 70002 is above 23, 10 x ln\(10 classes\) "
        r"\(guessing uniformly scores 2\.3\); lower",
    ):
        check_epoch({"loss": 70002.0, "lr": 10.0}, epoch=0, num_classes=10, phase="frozen")


def test_the_guard_carries_the_previous_loss_across_epochs() -> None:
    guard = DivergenceGuard(num_classes=2)
    guard.on_epoch_end(0, {"loss": 3.0})  # a first epoch under 10 x ln 2 = 6.93
    guard.on_epoch_end(1, {"loss": 2.5})  # above 3 x ln 2, falling
    with pytest.raises(TrainingDivergedError, match=r"did not fall from the previous epoch's 2\.5;"):
        guard.on_epoch_end(2, {"loss": 2.6})
    # A resumed run's guard starts from the last trained epoch's loss.
    resumed = DivergenceGuard(num_classes=2, previous_loss=2.0)
    with pytest.raises(TrainingDivergedError, match=r"did not fall from the previous epoch's 2;"):
        resumed.on_epoch_end(5, {"loss": 2.2})


@pytest.mark.parametrize(("key", "value", "shown"), [("loss", math.nan, "nan"), ("val_loss", math.inf, "inf")])
def test_a_non_finite_loss_is_divergence(key: str, value: float, shown: str) -> None:
    logs = {"loss": 0.5, "val_loss": 0.5, key: value}
    with pytest.raises(TrainingDivergedError, match=rf"^training diverged in epoch 1 \(phase top\): {key} is {shown};"):
        check_epoch(logs, epoch=0, num_classes=3, phase="top")
