"""Weight penalties and constraints of the head's Dense kernels: L1, L2, L1L2 and max-norm.

Why a module: "where is max-norm applied" should be answered by a file name. Both are Keras' own
objects (`keras.regularizers`, `keras.constraints.MaxNorm`), so a saved model reloads without this
repository. The penalty is added to the training loss; the constraint rescales each kernel column
after every optimiser step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import keras


def kernel_regularizer(*, l1: float, l2: float) -> keras.regularizers.Regularizer | None:
    """L1 (`l1 * sum|w|`), L2 (`l2 * sum w**2`), both (L1L2), or None when both factors are 0.

    Raises:
        ValueError: A negative factor.
    """
    if l1 < 0 or l2 < 0:
        raise ValueError(f"kernel_regularizer factors must be >= 0; received l1={l1}, l2={l2}")
    import keras

    if l1 and l2:
        return keras.regularizers.L1L2(l1=l1, l2=l2)
    if l1:
        return keras.regularizers.L1(l1)
    if l2:
        return keras.regularizers.L2(l2)
    return None


def kernel_constraint(*, max_norm: float | None, axis: int = 0) -> keras.constraints.Constraint | None:
    """Keras' MaxNorm: the weights along `axis` (0: each unit's incoming weights) keep norm <= `max_norm`.

    Raises:
        ValueError: A bound that is not positive, or an axis other than 0 or 1.
    """
    if max_norm is None:
        return None
    if max_norm <= 0:
        raise ValueError(f"max_norm is {max_norm}; it must be > 0")
    if axis not in (0, 1):
        raise ValueError(f"max_norm axis is {axis}; a Dense kernel has axes 0 (inputs) and 1 (units)")
    import keras

    return keras.constraints.MaxNorm(max_value=max_norm, axis=axis)
