"""The optimiser registry."""

from __future__ import annotations

import keras
import pytest

from pipeline.optimizers import OPTIMIZER_NAMES, make_optimizer


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("sgd", "SGD"),
        ("adagrad", "Adagrad"),
        ("rmsprop", "RMSprop"),
        ("adam", "Adam"),
        ("nadam", "Nadam"),
        ("adamw", "AdamW"),
    ],
)
def test_each_name_builds_its_keras_optimizer(name: str, expected: str) -> None:
    optimizer = make_optimizer(name, learning_rate=0.125)
    assert type(optimizer) is getattr(keras.optimizers, expected)
    assert float(optimizer.learning_rate) == 0.125


def test_every_call_builds_a_fresh_optimizer() -> None:
    assert make_optimizer("adam", learning_rate=0.1) is not make_optimizer("adam", learning_rate=0.1)


def test_unknown_name_lists_the_registered_ones() -> None:
    with pytest.raises(ValueError, match=f"unknown optimizer 'lion'; registered: {', '.join(OPTIMIZER_NAMES)}"):
        make_optimizer("lion", learning_rate=0.1)
