"""Activations: the initialiser `auto` matches to each, and the combinations the course warns against."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.model.activations import (
    ACTIVATION_NAMES,
    combination_problems,
    matched_initializer,
    resolve_dropout_type,
    resolve_initializer,
)

REPOSITORY = Path(__file__).resolve().parents[2]


def test_the_course_activations_are_registered() -> None:
    assert ACTIVATION_NAMES == (
        "relu",
        "leaky_relu",
        "elu",
        "selu",
        "prelu",
        "gelu",
        "swish",
        "tanh",
        "sigmoid",
        "maxout",
    )


@pytest.mark.parametrize(
    ("activation", "initializer"),
    [
        ("relu", "he_normal"),
        ("leaky_relu", "he_normal"),
        ("elu", "he_normal"),
        ("prelu", "he_normal"),
        ("gelu", "he_normal"),
        ("swish", "he_normal"),
        ("maxout", "he_normal"),
        ("selu", "lecun_normal"),
        ("tanh", "glorot_uniform"),
        ("sigmoid", "glorot_uniform"),
    ],
)
def test_auto_initializer_matches_the_activation(activation: str, initializer: str) -> None:
    assert matched_initializer(activation) == initializer
    assert resolve_initializer("auto", activation=activation) == initializer


def test_explicit_initializer_wins_and_unknown_ones_are_listed() -> None:
    assert resolve_initializer("orthogonal", activation="relu") == "orthogonal"
    with pytest.raises(ValueError, match="unknown initializer 'he_gaussian'; allowed: glorot_uniform, glorot_normal"):
        resolve_initializer("he_gaussian", activation="relu")
    with pytest.raises(ValueError, match="unknown activation 'mish'; allowed: relu, leaky_relu"):
        matched_initializer("mish")


@pytest.mark.parametrize(
    ("activation", "dropout_type", "resolved"),
    [
        ("selu", "auto", "alpha"),
        ("relu", "auto", "standard"),
        ("selu", "alpha", "alpha"),
        ("gelu", "standard", "standard"),
    ],
)
def test_auto_dropout_is_alpha_for_selu(activation: str, dropout_type: str, resolved: str) -> None:
    assert resolve_dropout_type(activation, dropout_type) == resolved


def test_sound_heads_have_no_problems() -> None:
    assert combination_problems(activation="selu", batch_norm="none", dropout_type="auto", dropout_rates=[0.2]) == []
    assert combination_problems(activation="relu", batch_norm="before", dropout_type="auto", dropout_rates=[0.5]) == []
    # Alpha dropout at rate 0 drops nothing, so it cannot hurt.
    assert combination_problems(activation="relu", batch_norm="none", dropout_type="alpha", dropout_rates=[0.0]) == []


def test_each_warned_combination_is_refused_with_its_reason() -> None:
    (selu_bn,) = combination_problems(activation="selu", batch_norm="after", dropout_type="auto", dropout_rates=[0.0])
    assert selu_bn.startswith("head.activation selu with head.batch_norm after: SELU keeps each layer's outputs")
    (selu_plain,) = combination_problems(
        activation="selu", batch_norm="none", dropout_type="standard", dropout_rates=[0.0, 0.1]
    )
    assert selu_plain.startswith("head.activation selu with head.dropout_type standard: plain dropout shifts")
    (alpha_relu,) = combination_problems(
        activation="relu", batch_norm="none", dropout_type="alpha", dropout_rates=[0.3]
    )
    assert alpha_relu.startswith("head.dropout_type alpha with head.activation relu: AlphaDropout preserves SELU's")


def test_unknown_dropout_type_is_listed() -> None:
    with pytest.raises(ValueError, match="unknown dropout_type 'gaussian'; allowed: auto, standard, alpha"):
        resolve_dropout_type("relu", "gaussian")


def test_every_problem_is_reported_at_once() -> None:
    problems = combination_problems(
        activation="selu", batch_norm="before", dropout_type="standard", dropout_rates=[0.0, 0.2]
    )
    assert [problem.split(":")[0] for problem in problems] == [
        "head.activation selu with head.batch_norm before",
        "head.activation selu with head.dropout_type standard",
    ]


def test_registries_load_without_tensorflow() -> None:
    # Params validation imports these before TensorFlow loads; importing Keras here would cost seconds.
    code = (
        "import sys, pipeline.model.activations, pipeline.model.regularizers; "
        "print(sorted(name for name in ('keras', 'tensorflow') if name in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPOSITORY)
    assert result.stdout.strip() == "[]"
