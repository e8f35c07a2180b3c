"""Monte Carlo dropout: N stochastic passes with only the dropout layers active, their mean and spread.

Why not `model(x, training=True)`: that also switches BatchNormalization to the statistics of the
batch at hand (and random augmentation layers on), so a batch of one image, or of similar images,
would get other probabilities for reasons that have nothing to do with model uncertainty. Here a
copy of the model shares every layer and weight with the original, except that each dropout layer
is wrapped so that it always drops, whatever `training` the model is called with; everything else
runs in inference mode.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np

from pipeline.serving.errors import PredictionError

# SpatialDropout1D/2D/3D derive from Dropout.
DROPOUT_TYPES: tuple[type[keras.layers.Layer], ...] = (
    keras.layers.Dropout,
    keras.layers.AlphaDropout,
    keras.layers.GaussianDropout,
)


class AlwaysDropping(keras.layers.Layer):
    """Calls the wrapped dropout layer in training mode, also when the model runs in inference mode."""

    def __init__(self, layer: keras.layers.Layer, **kwargs: object) -> None:
        super().__init__(name=f"{layer.name}_mc", **kwargs)
        self.layer = layer

    def call(self, inputs: object, training: bool | None = None) -> object:
        return self.layer(inputs, training=True)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return input_shape


def dropout_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """Every dropout-family layer of the model, nested models included."""
    found = []
    for layer in model.layers:
        if isinstance(layer, DROPOUT_TYPES):
            found.append(layer)
        elif isinstance(layer, keras.Model):
            found.extend(dropout_layers(layer))
    return found


def stochastic_model(model: keras.Model) -> keras.Model:
    """A copy of a functional model whose dropout layers drop at every call; all weights shared.

    Args:
        model: A functional (or Sequential) Keras model; nested models are copied the same way.

    Returns:
        The stochastic copy; the original is not changed.

    Raises:
        PredictionError: The model holds no dropout layer, so every pass would be the same.
    """
    if not dropout_layers(model):
        raise PredictionError(
            f"model {model.name} has no dropout layer ({', '.join(cls.__name__ for cls in DROPOUT_TYPES)}): "
            "MC dropout needs one, every pass would give the same probabilities"
        )

    def clone(layer: keras.layers.Layer) -> keras.layers.Layer:
        return AlwaysDropping(layer) if isinstance(layer, DROPOUT_TYPES) else layer

    return keras.models.clone_model(model, clone_function=clone, recursive=True)


def sample(forward: Callable[[np.ndarray], np.ndarray], images: np.ndarray, *, passes: int) -> np.ndarray:
    """Runs `passes` stochastic forward passes over the same images.

    Args:
        forward: Images -> probabilities through the stochastic model (`predict.forward_function` of
            what `stochastic_model` returned).
        images: The model's input batch.
        passes: How many passes (at least 2, for a spread to mean anything).

    Returns:
        float32 array (passes, images, classes).

    Raises:
        ValueError: Fewer than 2 passes.
    """
    if passes < 2:
        raise ValueError(f"MC dropout needs at least 2 passes, received {passes}")
    return np.stack([forward(images) for _ in range(passes)])


def summarize(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation (population, ddof 0) of each class probability over the passes.

    Args:
        samples: (passes, images, classes), as `sample` returns.

    Returns:
        The mean and the standard deviation, each (images, classes), in float64.
    """
    samples = samples.astype(np.float64)
    return samples.mean(axis=0), samples.std(axis=0)
