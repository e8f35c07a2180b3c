"""The `diagnostics` section: defaults, switches and the range of each threshold."""

from __future__ import annotations

import pytest

from pipeline.params import ParamsError, parse


def test_defaults_turn_every_part_on() -> None:
    section = parse({}).diagnostics
    assert (section.gradient_norms, section.dead_relus, section.diagnosis) == (True, True, True)
    assert (section.vanishing_ratio, section.exploding_norm, section.dead_relu_fraction) == (1e-5, 1e3, 0.5)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"vanishing_ratio": 0}, "diagnostics.vanishing_ratio"),
        ({"dead_relu_fraction": 1.5}, "diagnostics.dead_relu_fraction"),
        ({"exploding_norm": -1}, "diagnostics.exploding_norm"),
        ({"gradient_norms": "yes"}, "diagnostics.gradient_norms"),
        ({"probe_images": 2}, "diagnostics.probe_images"),
    ],
)
def test_out_of_range_values_are_refused_by_key(settings: dict, message: str) -> None:
    with pytest.raises(ParamsError, match=message):
        parse({"diagnostics": settings})


def test_params_yaml_sets_the_defaults() -> None:
    from pathlib import Path

    from pipeline.params import load

    assert load(Path(__file__).resolve().parents[2] / "params.yaml").diagnostics == parse({}).diagnostics
