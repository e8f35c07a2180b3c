"""pipeline/params/seed_group.py: the group key is every param but the seeds and the operational ones."""

from __future__ import annotations

import hashlib
import json
import re

import pytest

from pipeline.params import flatten, parse, seed_group_key
from pipeline.params.seed_group import NOT_IN_SEED_GROUP, seed_group_params

DEFAULT_KEY = seed_group_key(parse({}))


def test_the_key_is_the_sha256_of_the_params_left_in() -> None:
    config = parse({})
    kept = {
        key: value
        for key, value in flatten(config).items()
        if not any(key == name or key.startswith(f"{name}.") for name in NOT_IN_SEED_GROUP)
    }
    document = json.dumps(sorted(kept.items()), separators=(",", ":"))
    assert hashlib.sha256(document.encode()).hexdigest()[:12] == DEFAULT_KEY
    assert seed_group_params(config) == kept
    assert re.fullmatch(r"[0-9a-f]{12}", DEFAULT_KEY)


def test_what_the_key_leaves_out() -> None:
    kept = seed_group_params(parse({}))
    assert not [key for key in kept if key.startswith(("tracking.", "diagnostics.", "train.activation_store."))]
    left_out = sorted(set(flatten(parse({}))) - set(kept))
    assert [key for key in left_out if not key.startswith(("tracking.", "diagnostics."))] == [
        "backbone.cache_dir",
        "data.seed",
        "device.accelerator",
        "device.gpus",
        "device.jit_compile",
        "device.memory_growth",
        "evaluate.batch_size",
        "train.activation_store.limit_mb",
        "train.activation_store.path",
        "train.checkpoint_every_steps",
        "train.deterministic",
        "train.feature_cache_mb",
        "train.resume",
        "train.seed",
    ]
    assert {"head.dropout", "device.precision", "data.path", "train.unfreeze"} <= set(kept)


@pytest.mark.parametrize(
    "document",
    [
        {"train": {"seed": 1}},
        {"data": {"seed": 7}, "train": {"seed": 3}},
        {"tracking": {"uri": "sqlite:////elsewhere/mlflow.db", "experiment": "other", "champion_margin": 0.01}},
        {"train": {"resume": False, "activation_store": {"path": "/tmp/a"}}},
        {"train": {"checkpoint_every_steps": 100, "feature_cache_mb": 0}},
        {"device": {"accelerator": "cpu", "memory_growth": False, "jit_compile": False}},
        {"evaluate": {"batch_size": 32}, "backbone": {"cache_dir": "/tmp/weights"}},
        {"diagnostics": {"gradient_norms": False}},
    ],
)
def test_seeds_and_operational_settings_keep_the_group(document: dict) -> None:
    assert seed_group_key(parse(document)) == DEFAULT_KEY


@pytest.mark.parametrize(
    "document",
    [
        {"head": {"dropout": 0.3}},
        {"train": {"base_learning_rate": 0.0005}},
        {"device": {"precision": "float32"}},
        {"data": {"subset_size": 1000}},
        {"evaluate": {"baselines": {"pixels": {"side": 8}}}},
    ],
)
def test_a_setting_that_changes_the_result_makes_another_group(document: dict) -> None:
    assert seed_group_key(parse(document)) != DEFAULT_KEY


def test_two_changes_give_two_groups() -> None:
    assert seed_group_key(parse({"head": {"dropout": 0.3}})) != seed_group_key(parse({"head": {"dropout": 0.4}}))
    assert seed_group_key(parse({"head": {"dropout": 0.3}, "train": {"seed": 5}})) == seed_group_key(
        parse({"head": {"dropout": 0.3}})
    )
