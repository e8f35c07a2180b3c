"""The head section of the params schema (pipeline/params/head.py): rates, activations and their pairings."""

from __future__ import annotations

import pytest

from pipeline.params import parse
from tests.params.conftest import error_message


@pytest.mark.parametrize("dropout", [1.0, 1.5])
def test_dropout_of_one_or_more(dropout: float) -> None:
    message = error_message({"head": {"dropout": dropout}})

    assert f"head.dropout: received {dropout}" in message
    assert "less than 1" in message


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        ({"activation": "selu", "batch_norm": "after", "dropout": 0.0}, "head.activation selu"),
        ({"activation": "selu", "dropout_type": "standard", "dropout": 0.2}, "head.dropout_type"),
        ({"activation": "relu", "dropout_type": "alpha", "dropout": 0.2}, "head.dropout_type"),
        ({"hidden_units": [64, 32], "hidden_dropout": [0.1]}, "hidden_dropout lists 1 rates for 2 hidden layers"),
        ({"activation": "swishy"}, "unknown activation; registered activations: relu, leaky_relu"),
        ({"initializer": "he_gaussian"}, "unknown initializer; registered initializers: auto, glorot_uniform"),
        ({"max_norm": {"value": -1}}, "head.max_norm.value: received -1; Input should be greater than 0"),
        (
            {"kernel_regularizer": {"l3": 0.1}},
            "head.kernel_regularizer.l3: unknown key (received 0.1); allowed keys here: l1, l2",
        ),
    ],
)
def test_head_checks(head, expected: str) -> None:
    assert expected in error_message({"head": head})


def test_selu_with_alpha_dropout_and_no_batch_norm_is_accepted() -> None:
    head = parse({"head": {"activation": "selu", "hidden_units": [64], "hidden_dropout": 0.1}}).head

    assert head.hidden_dropout_rates() == [0.1]
