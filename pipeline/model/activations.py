"""Activations of the head's hidden layers, the initialiser each one needs, and the pairings to refuse.

Why one place: the course pairs each activation with an initialisation (Glorot for tanh and sigmoid,
He for the ReLU family, LeCun for SELU) and warns against some combinations (SELU with BatchNorm or
plain dropout). Params validation (before TensorFlow loads) and the head builder both need these
rules, so this module is plain data and functions; the Keras layers are made in `pipeline.model.head`.
"""

from __future__ import annotations

from collections.abc import Sequence

# name -> the initialiser `auto` picks for it.
_MATCHED_INITIALIZER: dict[str, str] = {
    "relu": "he_normal",
    "leaky_relu": "he_normal",
    "elu": "he_normal",
    "selu": "lecun_normal",
    "prelu": "he_normal",
    "gelu": "he_normal",
    "swish": "he_normal",
    "tanh": "glorot_uniform",
    "sigmoid": "glorot_uniform",
    # Piecewise linear like ReLU (a maxout unit of two pieces can be a ReLU): He's variance argument holds.
    "maxout": "he_normal",
}
ACTIVATION_NAMES: tuple[str, ...] = tuple(_MATCHED_INITIALIZER)
INITIALIZER_NAMES: tuple[str, ...] = (
    "glorot_uniform",
    "glorot_normal",
    "he_uniform",
    "he_normal",
    "lecun_uniform",
    "lecun_normal",
    "orthogonal",
    "random_normal",
    "random_uniform",
    "truncated_normal",
    "zeros",
    "ones",
)
BATCH_NORM_PLACES = ("none", "before", "after")
DROPOUT_TYPES = ("auto", "standard", "alpha")


def _check(value: str, allowed: Sequence[str], kind: str) -> None:
    """Raises ValueError naming `kind`, the value received and the allowed names."""
    if value not in allowed:
        raise ValueError(f"unknown {kind} {value!r}; allowed: {', '.join(allowed)}")


def matched_initializer(activation: str) -> str:
    """The initialiser `auto` means for `activation`: He, LeCun or Glorot.

    Why: each keeps the variance of the activations steady from layer to layer for its family: He
    (variance 2/fan_in) for the ReLU family, which zeroes about half its inputs; LeCun (1/fan_in) for
    SELU, whose self-normalisation assumes it; Glorot (2/(fan_in+fan_out)) for tanh and sigmoid.

    Args:
        activation: One of `ACTIVATION_NAMES`.

    Returns:
        A Keras initialiser name: he_normal, lecun_normal or glorot_uniform.

    Raises:
        ValueError: `activation` is not registered.
    """
    _check(activation, ACTIVATION_NAMES, "activation")
    return _MATCHED_INITIALIZER[activation]


def resolve_initializer(initializer: str, *, activation: str) -> str:
    """`auto` resolved for `activation`, or the explicit Keras initialiser name checked.

    Args:
        initializer: "auto" or one of `INITIALIZER_NAMES`.
        activation: One of `ACTIVATION_NAMES`.

    Returns:
        The Keras initialiser name to build.

    Raises:
        ValueError: An unknown initialiser or activation; the message lists the allowed names.
    """
    if initializer == "auto":
        return matched_initializer(activation)
    _check(initializer, INITIALIZER_NAMES, "initializer")
    return initializer


def resolve_dropout_type(activation: str, dropout_type: str) -> str:
    """`auto` becomes `alpha` for SELU (AlphaDropout keeps its self-normalisation) and `standard` otherwise.

    Args:
        activation: The hidden layers' activation.
        dropout_type: One of `DROPOUT_TYPES`.

    Returns:
        "standard" or "alpha".

    Raises:
        ValueError: An unknown dropout type; the message lists the allowed ones.
    """
    _check(dropout_type, DROPOUT_TYPES, "dropout_type")
    if dropout_type != "auto":
        return dropout_type
    return "alpha" if activation == "selu" else "standard"


def combination_problems(
    *, activation: str, batch_norm: str, dropout_type: str, dropout_rates: Sequence[float]
) -> list[str]:
    """The pairings the course warns against, each as a sentence naming the keys and the reason.

    Args:
        activation: The hidden layers' activation.
        batch_norm: Where BatchNormalization goes (none, before, after).
        dropout_type: auto, standard or alpha.
        dropout_rates: Every dropout rate of the head (input and hidden).

    Returns:
        The problems; empty when the head is sound.

    Raises:
        ValueError: An unknown dropout type; the message lists the allowed ones.
    """
    problems = []
    resolved = resolve_dropout_type(activation, dropout_type)
    dropping = any(rate > 0 for rate in dropout_rates)
    if activation == "selu" and batch_norm != "none":
        problems.append(
            f"head.activation selu with head.batch_norm {batch_norm}: SELU keeps each layer's outputs at mean 0 "
            "and variance 1 by itself (self-normalisation), and BatchNormalization re-centring fights it; "
            "set batch_norm: none or choose another activation"
        )
    if activation == "selu" and resolved == "standard" and dropping:
        problems.append(
            "head.activation selu with head.dropout_type standard: plain dropout shifts the mean and variance "
            "SELU preserves; use dropout_type alpha (or auto), which keeps them"
        )
    if activation != "selu" and resolved == "alpha" and dropping:
        problems.append(
            f"head.dropout_type alpha with head.activation {activation}: AlphaDropout preserves SELU's "
            "statistics only; use dropout_type standard (or auto) with this activation"
        )
    return problems
