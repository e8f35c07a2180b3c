"""Classifying image files with a trained model: read like the training images, top-k classes, MC dropout.

Why the reading matters: the model saw its training images through a fixed path: decoded (EXIF
rotation, any mode to grey or RGB, resized to the stored size) by `pipeline.data.decode.decode_image`
or read from IDX files as 28x28 grey, then resized to the model's input by
`pipeline.data.datasets.to_model_input`. A new file goes through the very same two steps, with the
colour and stored size of the model's card, so a PNG exported from Fashion-MNIST gets the
probabilities its array got in evaluation. Files that cannot be read get one reason each; the
others are still classified.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.data.decode import Color, decode_image
from pipeline.serving.errors import PredictionError
from pipeline.serving.inputs import MissingInput, collect_inputs

if TYPE_CHECKING:
    import keras

    from pipeline.model.model_card import ModelCard


@dataclass(frozen=True)
class ClassScore:
    """One class of a prediction.

    Attributes:
        index: The model's output index.
        name: The class name.
        probability: The probability (with MC dropout: the mean over the passes).
        std: With MC dropout, the standard deviation over the passes; None otherwise.
    """

    index: int
    name: str
    probability: float
    std: float | None = None


@dataclass(frozen=True)
class Prediction:
    """The top classes of one file, or why it could not be classified."""

    path: Path
    top: tuple[ClassScore, ...] = ()
    error: str | None = None


@dataclass(frozen=True)
class Reading:
    """How new files are read so that they look like the training images.

    Attributes:
        color: "grey" or "rgb", what each file is converted to.
        stored_size: Side the file is first resized to (the stored training images' side).
        image_size: The model's input side, reached by the same resize as in training.
        max_pixels: Largest non-JPEG image decoded (decompression-bomb guard).
    """

    color: Color
    stored_size: int
    image_size: int
    max_pixels: int


def input_size(model: keras.Model) -> int:
    """The side of the square RGB input of an exported model.

    Raises:
        PredictionError: The model does not take (batch, size, size, 3) images.
    """
    shape = tuple(model.input_shape)
    if len(shape) != 4 or shape[3] != 3 or shape[1] is None or shape[1] != shape[2]:
        raise PredictionError(
            f"model {model.name} takes inputs of shape {shape}; predict needs an exported classifier that "
            "takes square RGB images on 0..255, (None, size, size, 3)"
        )
    return int(shape[1])


def reading_for(card: ModelCard | None, *, image_size: int, max_pixels: int) -> Reading:
    """The reading of the model's training images, or RGB straight to the input size without a card.

    Args:
        card: The model's card; None when it has none (files are then read as RGB at `image_size`).
        image_size: The model's input side.
        max_pixels: Largest non-JPEG image decoded.

    Returns:
        How to read new files.
    """
    if card is None:
        return Reading(color="rgb", stored_size=image_size, image_size=image_size, max_pixels=max_pixels)
    return Reading(
        color=card.color,
        stored_size=card.stored_size or image_size,
        image_size=image_size,
        max_pixels=max_pixels,
    )


def class_names_for(names: Sequence[str] | None, num_classes: int) -> tuple[str, ...]:
    """The model's class names, checked against its outputs; `class N` when none are known.

    Args:
        names: The names (a card's, or another record's of the same model), or None.
        num_classes: The model's number of outputs.

    Returns:
        Output index -> name.

    Raises:
        PredictionError: Another number of names than the model has outputs.
    """
    if names is None:
        return tuple(f"class {index}" for index in range(num_classes))
    if len(names) != num_classes:
        raise PredictionError(
            f"the model has {num_classes} outputs but {len(names)} class names were found "
            f"({', '.join(names)}): they belong to another model"
        )
    return tuple(names)


def forward_function(model: keras.Model) -> Callable[[Any], np.ndarray]:
    """Images -> probabilities in inference mode, traced once (a `predict` per batch would retrace).

    Args:
        model: The model (or the stochastic copy of `mc_dropout.stochastic_model`).

    Returns:
        A function of a float32 batch returning a numpy array.
    """
    import tensorflow as tf

    traced = tf.function(lambda images: model(images, training=False), reduce_retracing=True)
    return lambda images: np.asarray(traced(images))


def top_classes(
    probabilities: np.ndarray, class_names: tuple[str, ...], *, k: int, std: np.ndarray | None = None
) -> tuple[ClassScore, ...]:
    """The k most probable classes, most probable first (ties: lower index first).

    Args:
        probabilities: One image's probabilities (classes,).
        class_names: Index -> name.
        k: How many classes (at most all of them).
        std: The MC-dropout standard deviations (classes,), or None.

    Returns:
        The classes.
    """
    order = np.argsort(-probabilities, kind="stable")[:k]
    return tuple(
        ClassScore(
            index=int(index),
            name=class_names[index],
            probability=float(probabilities[index]),
            std=None if std is None else float(std[index]),
        )
        for index in order
    )


def classify(
    model: keras.Model,
    paths: Sequence[str | Path],
    *,
    class_names: tuple[str, ...],
    reading: Reading,
    top_k: int = 3,
    mc_passes: int = 0,
    batch_size: int = 32,
    progress: bool = False,
) -> list[Prediction]:
    """Classifies image files and folders of them.

    Args:
        model: The exported classifier (0..255 RGB in, probabilities out).
        paths: Files and folders.
        class_names: Output index -> name (see `class_names_for`).
        reading: How files are read (`reading_for`).
        top_k: Classes reported per file.
        mc_passes: 0 for one deterministic pass; N >= 2 for N passes with the dropout layers active,
            reporting each class's mean and standard deviation.
        batch_size: Images decoded and run together.
        progress: Show a progress bar on stderr.

    Returns:
        One prediction per input image, in order; unreadable files and missing paths hold their error.

    Raises:
        ValueError: `top_k` below 1, or `mc_passes` of 1 or below 0.
        PredictionError: `mc_passes` for a model without dropout.
    """
    from tqdm import tqdm

    from pipeline.data.datasets import to_model_input
    from pipeline.serving import mc_dropout

    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, received {top_k}")
    if mc_passes == 1 or mc_passes < 0:
        raise ValueError(f"MC dropout needs at least 2 passes (0 turns it off), received {mc_passes}")
    forward = forward_function(mc_dropout.stochastic_model(model) if mc_passes else model)
    k = min(top_k, len(class_names))
    inputs = collect_inputs(paths)
    results: list[Prediction | None] = [
        Prediction(item.path, error=item.error) if isinstance(item, MissingInput) else None for item in inputs
    ]
    pending = [(position, item) for position, item in enumerate(inputs) if isinstance(item, Path)]
    with tqdm(total=len(pending), unit="image", desc="classifying", file=sys.stderr, disable=not progress) as bar:
        for start in range(0, len(pending), batch_size):
            decoded: list[tuple[int, Path, np.ndarray]] = []
            for position, path in pending[start : start + batch_size]:
                image = decode_image(path, size=reading.stored_size, color=reading.color, max_pixels=reading.max_pixels)
                if image.pixels is None:
                    results[position] = Prediction(path, error=image.reason or "unreadable")
                else:
                    decoded.append((position, path, image.pixels))
                bar.update(1)
            if not decoded:
                continue
            batch = to_model_input(np.stack([pixels for _, _, pixels in decoded]), image_size=reading.image_size)
            if mc_passes:
                probabilities, spread = mc_dropout.summarize(mc_dropout.sample(forward, batch, passes=mc_passes))
            else:
                probabilities, spread = forward(batch), None
            for row, (position, path, _) in enumerate(decoded):
                row_std = None if spread is None else spread[row]
                results[position] = Prediction(path, top=top_classes(probabilities[row], class_names, k=k, std=row_std))
    return [result for result in results if result is not None]
