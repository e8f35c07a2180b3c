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
    """Keras' L1 (`l1 * sum|w|`), L2 (`l2 * sum w**2`), both (L1L2), or None when both factors are 0.

    Args:
        l1: Factor of the sum of absolute weights.
        l2: Factor of the sum of squared weights (no 1/2: Keras' convention).

    Returns:
        The regulariser, or None when there is nothing to add to the loss.

    Raises:
        ValueError: A negative factor.
    """
    if l1 < 0 or l2 < 0:
        raise ValueError(f"kernel_regularizer factors must be >= 0; received l1={l1}, l2={l2}")
    # Keras' own classes (not a closure of ours) so the penalty is saved in the .keras config and reloads.
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

    Args:
        max_norm: The bound, or None for no constraint.
        axis: The kernel axis the norm is taken over: 0 (each output unit's incoming weights) or 1
            (each input feature's outgoing weights).

    Returns:
        The constraint, or None.

    Raises:
        ValueError: A bound that is not positive, or an axis other than 0 or 1.
    """
    if max_norm is None:
        return None
    if max_norm <= 0:
        raise ValueError(f"max_norm is {max_norm}; allowed: a number > 0, or None for no constraint")
    if axis not in (0, 1):
        raise ValueError(f"max_norm axis is {axis}; allowed: 0 or 1, the axes of a Dense kernel (inputs, units)")
    import keras

    return keras.constraints.MaxNorm(max_value=max_norm, axis=axis)
