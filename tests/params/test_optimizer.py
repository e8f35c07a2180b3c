"""The optimiser settings of the params schema (pipeline/params/optimizer.py): names, keys, ranges, clipping."""

from __future__ import annotations

import pytest

from tests.params.conftest import error_message


@pytest.mark.parametrize("value", ["lion", {"name": "lion", "beta_1": 0.9}])
def test_unknown_optimizer_lists_registered_names(value) -> None:
    message = error_message({"train": {"optimizer": value}})

    assert f"train.optimizer: received {value!r}" in message
    assert (
        "unknown optimizer 'lion'; registered optimizers: sgd, adagrad, adadelta, rmsprop, adam, adamw, adamax, nadam"
        in message
    )


def test_optimizer_refuses_a_key_it_does_not_take() -> None:
    message = error_message({"train": {"optimizer": {"name": "adam", "momentum": 0.9}}})

    assert message.splitlines()[1] == (
        "  train.optimizer.momentum: unknown key (received 0.9); allowed keys here: amsgrad, beta_1, beta_2, "
        "clipnorm, clipvalue, epsilon, global_clipnorm, name"
    )


def test_optimizer_hyperparameter_out_of_range_names_its_key() -> None:
    message = error_message(
        {
            "train": {
                "unfreeze": [
                    {"blocks": 1, "epochs": 1, "lr_factor": 0.1, "optimizer": {"name": "sgd", "momentum": 1.5}}
                ]
            }
        }
    )

    assert "train.unfreeze.0.optimizer.momentum: received 1.5; Input should be less than 1" in message


def test_more_than_one_clipping_is_refused() -> None:
    message = error_message({"train": {"optimizer": {"name": "rmsprop", "clipvalue": 0.5, "clipnorm": 1.0}}})

    assert "train.optimizer: received" in message
    assert "choose at most one of clipvalue, clipnorm, global_clipnorm; received clipvalue, clipnorm" in message


def test_optimizer_mapping_without_a_name() -> None:
    message = error_message({"train": {"optimizer": {"momentum": 0.9}}})

    assert "train.optimizer: received {'momentum': 0.9}; a optimizer mapping needs a 'name' key" in message
