"""The lr_find, device and tracking sections of the params schema (pipeline/params/runtime.py)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from pipeline.params import ParamsError, parse
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
        (
            {"accelerator": "cpu", "gpus": [0, 2]},
            r"device.gpus \[0, 2\] names GPUs, but device.accelerator is 'cpu'; allowed with cpu: gpus all",
        ),
    ],
)
def test_device_section_refusals(device: dict[str, Any], message: str) -> None:
    assert re.search(message, error_message({"device": device}))


def test_deterministic_is_auto_or_a_boolean() -> None:
    assert parse({}).train.deterministic == "auto"
    assert parse({"train": {"deterministic": False}}).train.deterministic is False
    message = error_message({"train": {"deterministic": "yes"}})
    assert message.endswith("train.deterministic: received 'yes'; Input should be a valid boolean, or auto")


def test_champion_alpha_is_a_probability_or_null() -> None:
    assert parse({}).tracking.champion_alpha == 0.05
    assert parse({"tracking": {"champion_alpha": None}}).tracking.champion_alpha is None
    assert parse({"tracking": {"champion_alpha": 0.01}}).tracking.champion_alpha == 0.01
    message = error_message({"tracking": {"champion_alpha": 0}})
    assert "tracking.champion_alpha: received 0; Input should be greater than 0" in message
    message = error_message({"tracking": {"champion_alpha": 1.0}})
    assert "tracking.champion_alpha: received 1.0; Input should be less than 1" in message


def test_champion_margin_is_a_share_from_zero_to_below_one() -> None:
    assert parse({"tracking": {"champion_margin": 0.02}}).tracking.champion_margin == 0.02
    message = error_message({"tracking": {"champion_margin": -0.01}})
    assert "tracking.champion_margin: received -0.01; Input should be greater than or equal to 0" in message


def test_every_baseline_is_scored_and_gates_by_default() -> None:
    config = parse({})
    assert config.tracking.gate_baselines == ["majority", "probe", "pixels"]
    probe, pixels = config.evaluate.baselines.probe, config.evaluate.baselines.pixels
    assert (probe.enabled, probe.max_train_images, probe.max_iter) == (True, 2000, 300)
    assert (pixels.enabled, pixels.max_train_images, pixels.side, pixels.color) == (True, 10_000, 16, "grey")


@pytest.mark.parametrize(
    ("gate_baselines", "message"),
    [
        (
            ["probe", "knn"],
            r"tracking.gate_baselines: received \['probe', 'knn'\]; unknown baseline 'knn'; allowed: one or more of "
            r"majority, probe, pixels$",
        ),
        ([], r"tracking.gate_baselines: received \[\]; allowed: one or more of majority, probe, pixels$"),
        (["probe", "probe"], r"lists a baseline twice; allowed: one or more of majority, probe, pixels, each once$"),
    ],
)
def test_gate_baselines_refusals(gate_baselines: list[str], message: str) -> None:
    assert re.search(message, error_message({"tracking": {"gate_baselines": gate_baselines}}))


def test_a_gate_baseline_must_be_enabled_in_evaluate() -> None:
    off = {"probe": {"enabled": False}, "pixels": {"enabled": False}}
    with pytest.raises(
        ParamsError,
        match=(
            r"^params.yaml is invalid:\n  tracking.gate_baselines lists probe, pixels, but "
            r"evaluate.baselines.probe.enabled and evaluate.baselines.pixels.enabled are false, so evaluate does not "
            r"score them; enable them or remove them from tracking.gate_baselines$"
        ),
    ):
        parse({"evaluate": {"baselines": off}})
    assert "evaluate.baselines.probe.enabled is false, so evaluate does not score it;" in error_message(
        {"evaluate": {"baselines": {"probe": {"enabled": False}}}}
    )
    # Taken off the gate's list, a disabled baseline is fine.
    config = parse({"evaluate": {"baselines": off}, "tracking": {"gate_baselines": ["majority"]}})
    assert config.evaluate.baselines.disabled() == ("probe", "pixels")


@pytest.mark.parametrize(
    ("baselines", "message"),
    [
        (
            {"pixels": {"side": 1}},
            r"evaluate.baselines.pixels.side: received 1; Input should be greater than or equal to 2",
        ),
        (
            {"pixels": {"color": "rgb"}},
            r"evaluate.baselines.pixels.color: received 'rgb'; Input should be 'grey' or 'stored'",
        ),
        ({"probe": {"max_train_images": 5}}, r"evaluate.baselines.probe.max_train_images: received 5; Input should be"),
        (
            {"probe": {"enabled": "yes"}},
            r"evaluate.baselines.probe.enabled: received 'yes'; Input should be a valid bool",
        ),
        (
            {"probe": {"C": 1.0}},
            r"evaluate.baselines.probe.C: unknown key \(received 1.0\); allowed keys here: enabled, max_iter",
        ),
    ],
)
def test_baseline_settings_refusals(baselines: dict[str, Any], message: str) -> None:
    assert re.search(message, error_message({"evaluate": {"baselines": baselines}}))
