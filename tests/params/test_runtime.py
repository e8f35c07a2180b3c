"""The lr_find, device and tracking sections of the params schema (pipeline/params/runtime.py)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from pipeline.params import parse
from tests.params.conftest import error_message


def test_lr_find_range_must_grow() -> None:
    assert "max_lr (0.001) must exceed min_lr (0.01)" in error_message({"lr_find": {"min_lr": 0.01, "max_lr": 0.001}})


@pytest.mark.parametrize(
    ("device", "message"),
    [
        ({"type": "gpu"}, r"^params.yaml is invalid:\n  device.type \('gpu'\) is now device.accelerator$"),
        ({"gpu_indices": [0]}, r"device.gpu_indices \(\[0\]\) is now device.gpus"),
        ({"gpus": [1, 1]}, r"device.gpus: received \[1, 1\]; lists a GPU twice; allowed: all, or a list of GPU"),
        ({"gpus": []}, r"device.gpus: received \[\]; allowed: all, or a list of GPU indices such as \[0, 1\]$"),
        ({"gpus": "some"}, r"device.gpus: received 'some'; allowed: all, or a list of GPU indices such as \[0, 1\]$"),
        ({"precision": "float16"}, r"device.precision: received 'float16'"),
        ({"jit_compile": "yes"}, r"device.jit_compile: received 'yes'; Input should be a valid boolean, or auto$"),
    ],
)
def test_device_section_refusals(device: dict[str, Any], message: str) -> None:
    assert re.search(message, error_message({"device": device}))


def test_champion_margin_is_a_share_from_zero_to_below_one() -> None:
    assert parse({"tracking": {"champion_margin": 0.02}}).tracking.champion_margin == 0.02
    message = error_message({"tracking": {"champion_margin": -0.01}})
    assert "tracking.champion_margin: received -0.01; Input should be greater than or equal to 0" in message
