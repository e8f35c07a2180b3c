"""The schedule section of the params schema: the one place each schedule option is checked.

Every refusal names the key, quotes the value received and says what is allowed, on a line of its own.
"""

from __future__ import annotations

from typing import Any

import pytest

from pipeline.params import ParamsError, parse
from tests.params.conftest import error_message


def _refusal(schedule: dict[str, Any]) -> str:
    with pytest.raises(ParamsError) as caught:
        parse({"train": {"schedule": schedule}})
    lines = str(caught.value).splitlines()
    assert lines[0] == "params.yaml is invalid:"
    return "\n".join(line.strip() for line in lines[1:])


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [
        (
            {"name": "triangular"},
            "train.schedule: received {'name': 'triangular'}; unknown schedule 'triangular'; registered schedules: "
            "constant, power, exponential, piecewise, step_drop, performance, onecycle, cosine",
        ),
        (
            {"name": "cosine", "warmup_steps": 3},
            "train.schedule.warmup_steps: unknown key (received 3); allowed keys here: alpha, name, warmup_fraction, "
            "warmup_start",
        ),
        ({"name": "constant", "power": 2}, "train.schedule.power: unknown key (received 2); allowed keys here: name"),
        (
            {"name": "piecewise", "boundaries": [1]},
            "train.schedule.factors: received {'name': 'piecewise', 'boundaries': [1]}; Field required",
        ),
        (
            {"name": "power", "decay_epochs": 0},
            "train.schedule.decay_epochs: received 0; Input should be greater than 0",
        ),
        ({"name": "power", "power": -1.0}, "train.schedule.power: received -1.0; Input should be greater than 0"),
        (
            {"name": "exponential", "decay_epochs": float("inf")},
            "train.schedule.decay_epochs: received inf; Input should be a finite number",
        ),
        ({"name": "step_drop", "drop": 1.5}, "train.schedule.drop: received 1.5; Input should be less than 1"),
        (
            {"name": "step_drop", "epochs_drop": 2.5},
            "train.schedule.epochs_drop: received 2.5; Input should be a valid integer, got a number with a "
            "fractional part",
        ),
        ({"name": "performance", "factor": 1.0}, "train.schedule.factor: received 1.0; Input should be less than 1"),
        (
            {"name": "performance", "patience": -1},
            "train.schedule.patience: received -1; Input should be greater than or equal to 0",
        ),
        (
            {"name": "performance", "monitor": ""},
            "train.schedule.monitor: received ''; Input should be 'val_loss', 'val_accuracy', 'loss' or 'accuracy'",
        ),
        (
            {"name": "onecycle", "anneal": "step"},
            "train.schedule.anneal: received 'step'; Input should be 'cos' or 'linear'",
        ),
        (
            {"name": "onecycle", "cycle_momentum": "yes"},
            "train.schedule.cycle_momentum: received 'yes'; Input should be a valid boolean",
        ),
        (
            {"name": "onecycle", "div_factor": 0.5},
            "train.schedule.div_factor: received 0.5; Input should be greater than or equal to 1",
        ),
        (
            {"name": "onecycle", "max_momentum": 1.0},
            "train.schedule.max_momentum: received 1.0; Input should be less than 1",
        ),
        (
            {"name": "onecycle", "min_momentum": 0.96},
            "train.schedule: received {'name': 'onecycle', 'min_momentum': 0.96}; min_momentum (0.96) must not "
            "exceed max_momentum (0.95)",
        ),
        ({"name": "cosine", "alpha": 2}, "train.schedule.alpha: received 2; Input should be less than or equal to 1"),
        (
            {"name": "piecewise", "boundaries": [2, 1], "factors": [1, 1, 1]},
            "train.schedule: received {'name': 'piecewise', 'boundaries': [2, 1], 'factors': [1, 1, 1]}; boundaries "
            "must increase strictly; received [2.0, 1.0]",
        ),
        (
            {"name": "piecewise", "boundaries": [1], "factors": [1.0]},
            "train.schedule.factors: received [1.0]; List should have at least 2 items after validation, not 1",
        ),
        (
            {"name": "piecewise", "boundaries": [0], "factors": [1, 2]},
            "train.schedule.boundaries.0: received 0; Input should be greater than 0",
        ),
    ],
)
def test_each_bad_schedule_option_is_refused_once_with_its_key(schedule: dict[str, Any], expected: str) -> None:
    assert _refusal(schedule) == expected


def test_a_phase_takes_the_defaults_of_its_schedule() -> None:
    schedule = parse({"train": {"schedule": {"name": "onecycle", "pct_start": 0.3}}}).train.schedule

    assert schedule.options() == {
        "pct_start": 0.3,
        "div_factor": 25.0,
        "final_div_factor": 1e4,
        "anneal": "cos",
        "cycle_momentum": True,
        "max_momentum": 0.95,
        "min_momentum": 0.85,
    }


def test_unknown_schedule_and_schedule_option() -> None:
    unknown = error_message({"train": {"schedule": "triangular"}})
    option = error_message({"train": {"schedule": {"name": "cosine", "warmup_steps": 10}}})

    assert "unknown schedule 'triangular'; registered schedules: constant, power, exponential, piecewise" in unknown
    assert (
        "train.schedule.warmup_steps: unknown key (received 10); allowed keys here: alpha, name, warmup_fraction"
        in option
    )


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [
        ({"name": "piecewise", "boundaries": [2, 1], "factors": [1, 0.5, 0.1]}, "boundaries must increase strictly"),
        (
            {"name": "piecewise", "boundaries": [1], "factors": [1, 0.5, 0.1]},
            "factors needs one more entry than boundaries (2); received 3",
        ),
        (
            {"name": "onecycle", "min_momentum": 0.95, "max_momentum": 0.85},
            "min_momentum (0.95) must not exceed max_momentum (0.85)",
        ),
        ({"name": "step_drop", "drop": 1.5}, "train.schedule.drop: received 1.5; Input should be less than 1"),
    ],
)
def test_schedule_option_checks(schedule, expected: str) -> None:
    assert expected in error_message({"train": {"schedule": schedule}})
