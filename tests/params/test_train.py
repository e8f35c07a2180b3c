"""The train section of the params schema (pipeline/params/train.py): its numbers and unfreeze stages."""

from __future__ import annotations

import pytest

from pipeline.params import ParamsError, parse
from tests.params.conftest import error_message


def test_wrong_type() -> None:
    message = error_message({"train": {"batch_size": "sixty"}})

    assert "train.batch_size: received 'sixty'" in message
    assert "valid integer" in message


def test_negative_learning_rate() -> None:
    message = error_message({"train": {"base_learning_rate": -0.01}})

    assert "train.base_learning_rate: received -0.01" in message
    assert "greater than 0" in message


def test_zero_frozen_epochs() -> None:
    message = error_message({"train": {"frozen_epochs": 0}})

    assert "train.frozen_epochs: received 0" in message
    assert "greater than 0" in message


def test_zero_unfreeze_epochs() -> None:
    message = error_message({"train": {"unfreeze": [{"blocks": 1, "epochs": 0, "lr_factor": 0.1}]}})

    assert "train.unfreeze.0.epochs: received 0" in message
    assert "greater than 0" in message


def test_unfreeze_all_blocks_and_bad_block_words() -> None:
    assert (
        parse({"train": {"unfreeze": [{"blocks": "all", "epochs": 1, "lr_factor": 0.1}]}}).train.unfreeze[0].blocks
        == "all"
    )
    message = error_message({"train": {"unfreeze": [{"blocks": "most", "epochs": 1, "lr_factor": 0.1}]}})
    assert "train.unfreeze.0.blocks: received 'most'" in message


def test_activation_store_defaults_and_refusals() -> None:
    store = parse({}).train.activation_store
    assert (store.path, store.limit_mb) == (".cache/activations", 8192)

    message = error_message({"train": {"activation_store": {"limit_mb": -1}}})
    assert "train.activation_store.limit_mb: received -1" in message
    assert "greater than or equal to 0" in message
    message = error_message({"train": {"activation_store": {"path": ""}}})
    assert "train.activation_store.path: received ''" in message
    assert "at least 1 character" in message
    message = error_message({"train": {"activation_store": {"size_mb": 10}}})
    assert "train.activation_store.size_mb" in message


def test_resume_settings() -> None:
    assert (parse({}).train.resume, parse({}).train.checkpoint_every_steps) == (True, None)
    assert parse({"train": {"checkpoint_every_steps": 500}}).train.checkpoint_every_steps == 500
    with pytest.raises(ParamsError, match=r"train.checkpoint_every_steps is 5, but train.resume is false"):
        parse({"train": {"resume": False, "checkpoint_every_steps": 5}})
    with pytest.raises(ParamsError, match=r"train.checkpoint_every_steps: received 0; Input should be greater than 0"):
        parse({"train": {"checkpoint_every_steps": 0}})
    with pytest.raises(ParamsError, match=r"train.resume: received 'sometimes'"):
        parse({"train": {"resume": "sometimes"}})
