"""Classifying image files with a trained model: read like the training images, top-k classes, MC dropout.

Why the reading matters: the model saw its training images through a fixed path: decoded (EXIF
rotation, any mode to grey or RGB, resized to the stored size) by `pipeline.data.images.decode_image`
or read from IDX files as 28x28 grey, then resized to the model's input by
`pipeline.data.datasets.to_model_input`. A new file goes through the very same two steps, with the
colour and stored size of the model's card, so a PNG exported from Fashion-MNIST gets the
probabilities its array got in evaluation. Files that cannot be read get one reason each; the
others are still classified.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.data.images import IMAGE_EXTENSIONS, Color, decode_image

if TYPE_CHECKING:
    import keras

    from pipeline.model_card import ModelCard

PLUS_MINUS = "±"


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
        ValueError: The model does not take (batch, size, size, 3) images.
    """
    shape = tuple(model.input_shape)
    if len(shape) != 4 or shape[3] != 3 or shape[1] is None or shape[1] != shape[2]:
        raise ValueError(
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
        ValueError: Another number of names than the model has outputs.
    """
    if names is None:
        return tuple(f"class {index}" for index in range(num_classes))
    if len(names) != num_classes:
        raise ValueError(
            f"the model has {num_classes} outputs but {len(names)} class names were found "
            f"({', '.join(names)}): they belong to another model"
        )
    return tuple(names)


def collect_inputs(paths: Sequence[str | Path]) -> list[Prediction | Path]:
    """Expands folders into their image files (recursively, sorted, hidden entries left out).

    Args:
        paths: Files and folders, as given on the command line.

    Returns:
        For each image to classify its path, in order; for a path that does not exist or a folder
        without images, a `Prediction` holding the error.
    """
    collected: list[Prediction | Path] = []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            found = _images_in(path)
            if found:
                collected.extend(found)
            else:
                extensions = ", ".join(sorted(IMAGE_EXTENSIONS))
                collected.append(Prediction(path, error=f"folder without image files ({extensions})"))
        elif path.is_file():
            collected.append(path)
        else:
            collected.append(Prediction(path, error="no such file or folder"))
    return collected


def _images_in(folder: Path) -> list[Path]:
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(name for name in dirs if not name.startswith("."))
        found.extend(
            Path(root) / name
            for name in sorted(files)
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS
        )
    return found


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
        ValueError: `top_k` below 1, `mc_passes` of 1 or below 0, or a model without dropout with `mc_passes`.
    """
    from tqdm import tqdm

    from pipeline import mc_dropout
    from pipeline.data.datasets import to_model_input

    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, received {top_k}")
    if mc_passes == 1 or mc_passes < 0:
        raise ValueError(f"MC dropout needs at least 2 passes (0 turns it off), received {mc_passes}")
    forward = forward_function(mc_dropout.stochastic_model(model) if mc_passes else model)
    k = min(top_k, len(class_names))
    inputs = collect_inputs(paths)
    results: list[Prediction | None] = [item if isinstance(item, Prediction) else None for item in inputs]
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


def render_text(predictions: Sequence[Prediction]) -> str:
    """Each classified file, then its top classes with their probabilities (and spreads); errors left out.

    Args:
        predictions: What `classify` returned.

    Returns:
        The lines, each ending in a newline.
    """
    width = max((len(score.name) for item in predictions for score in item.top), default=0)
    lines = []
    for item in predictions:
        if item.error is not None:
            continue
        lines.append(f"{item.path}\n")
        for rank, score in enumerate(item.top, start=1):
            spread = "" if score.std is None else f" {PLUS_MINUS} {score.std:.4f}"
            lines.append(f"  {rank}. {score.name.ljust(width)}  {score.probability:.4f}{spread}\n")
    return "".join(lines)


def error_lines(predictions: Sequence[Prediction]) -> str:
    """One line per file that could not be classified: `error: PATH: REASON`."""
    return "".join(f"error: {item.path}: {item.error}\n" for item in predictions if item.error is not None)


def as_json(predictions: Sequence[Prediction]) -> list[dict[str, Any]]:
    """The predictions as JSON-friendly dicts: file, top (class, index, probability, std) and error."""
    return [
        {
            "file": str(item.path),
            "top": [
                {"class": score.name, "index": score.index, "probability": score.probability, "std": score.std}
                for score in item.top
            ],
            "error": item.error,
        }
        for item in predictions
    ]
