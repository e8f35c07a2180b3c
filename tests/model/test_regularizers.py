"""Kernel penalties and max-norm: Keras' own objects, chosen from the factors."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from pipeline.model.regularizers import kernel_constraint, kernel_regularizer

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


@pytest.mark.parametrize("axis", [0, 1])
def test_max_norm_rescales_only_what_is_over_the_bound(axis: int) -> None:
    constraint = kernel_constraint(max_norm=2.5, axis=axis)
    assert isinstance(constraint, keras.constraints.MaxNorm)
    constrained = keras.ops.convert_to_numpy(constraint(KERNEL))
    # Column norms (axis 0) are 3.16 and 2.06, row norms (axis 1) 2.24 and 3.04: one of each over 2.5.
    norms = np.linalg.norm(KERNEL, axis=axis)
    bounded = np.minimum(norms, 2.5)
    np.testing.assert_allclose(np.linalg.norm(constrained, axis=axis), bounded, rtol=1e-6)
    # Each column (row) is scaled as a whole, so its direction is kept.
    np.testing.assert_allclose(constrained, KERNEL * np.expand_dims(bounded / norms, axis), rtol=1e-6)
    assert kernel_constraint(max_norm=None) is None


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: kernel_regularizer(l1=-1.0, l2=0.0), "factors must be >= 0; received l1=-1.0, l2=0.0"),
        (lambda: kernel_constraint(max_norm=0.0), "max_norm is 0.0; allowed: a number > 0, or None"),
        (lambda: kernel_constraint(max_norm=1.0, axis=2), "max_norm axis is 2; allowed: 0 or 1"),
    ],
)
def test_bad_values_are_refused(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()
