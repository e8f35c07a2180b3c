"""Kernel penalties and max-norm: Keras' own objects, chosen from the factors."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from pipeline.regularizers import kernel_constraint, kernel_regularizer

KERNEL = np.array([[1.0, -2.0], [3.0, 0.5]], dtype="float32")


def test_no_factor_no_regularizer() -> None:
    assert kernel_regularizer(l1=0.0, l2=0.0) is None


@pytest.mark.parametrize(
    ("l1", "l2", "kind", "penalty"),
    [
        (0.01, 0.0, keras.regularizers.L1, 0.01 * 6.5),
        (0.0, 0.02, keras.regularizers.L2, 0.02 * 14.25),
        (0.01, 0.02, keras.regularizers.L1L2, 0.01 * 6.5 + 0.02 * 14.25),
    ],
)
def test_factors_choose_the_keras_regularizer(l1: float, l2: float, kind, penalty: float) -> None:
    regularizer = kernel_regularizer(l1=l1, l2=l2)
    assert type(regularizer) is kind
    assert float(regularizer(KERNEL)) == pytest.approx(penalty, rel=1e-6)


def test_max_norm_rescales_columns_over_the_bound() -> None:
    constraint = kernel_constraint(max_norm=2.0, axis=0)
    assert isinstance(constraint, keras.constraints.MaxNorm)
    constrained = keras.ops.convert_to_numpy(constraint(KERNEL))
    norms = np.linalg.norm(constrained, axis=0)
    assert norms == pytest.approx([2.0, 2.0], rel=1e-3)  # Keras adds an epsilon to the norm
    assert kernel_constraint(max_norm=None) is None


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: kernel_regularizer(l1=-1.0, l2=0.0), "factors must be >= 0; received l1=-1.0, l2=0.0"),
        (lambda: kernel_constraint(max_norm=0.0), "max_norm is 0.0; it must be > 0"),
        (lambda: kernel_constraint(max_norm=1.0, axis=2), "max_norm axis is 2; a Dense kernel has axes 0"),
    ],
)
def test_bad_values_are_refused(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()
