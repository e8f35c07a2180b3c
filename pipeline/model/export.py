"""Exported models: preprocessing folded in, written atomically, as `.keras` and as a TF SavedModel.

Why: a model in the registry or in `models/` must be usable without this repository: it takes RGB
pixels on 0..255 at its input size and applies the backbone's own scaling itself. And a run killed
mid-save must never leave a truncated `.keras` file where DVC or a user expects a model. The
SavedModel serves where Keras is not installed (TensorFlow Serving, `tf.saved_model.load`).

A model on a TF Hub or SavedModel backbone is the exception to "usable without this repository": its file
holds the fine-tuned weights but only the path of the SavedModel, which must still exist where it was.
"""

from __future__ import annotations

import contextlib
import functools
import json
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import keras

from pipeline.runtime import atomic


def end_to_end_model(classifier: keras.Model, preprocessing: keras.layers.Layer, *, image_size: int) -> keras.Model:
    """Wraps a classifier trained on preprocessed inputs so that it takes 0..255 RGB.

    Args:
        classifier: Preprocessed image -> class probabilities.
        preprocessing: The backbone's scaling layer.
        image_size: Square input size.

    Returns:
        0..255 RGB image -> class probabilities.
    """
    pixels = keras.Input(shape=(image_size, image_size, 3), name="pixels")
    # A fresh functional model over the same layers, not the classifier itself: `fit` may have compiled the
    # classifier with a phase's optimiser (a layer-wise one whose multipliers name the variables it trained),
    # and Keras would save that compile state and rebuild it at load time against a model whose backbone is
    # frozen again, which fails for a TF Hub / SavedModel backbone. An exported model needs no optimiser.
    inner = keras.Model(classifier.inputs, classifier.outputs, name=classifier.name)
    return keras.Model(pixels, inner(preprocessing(pixels)), name="classifier")


def save_model(model: keras.Model, path: str | Path) -> Path:
    """Saves a `.keras` file atomically: a temporary sibling, fsync, then a rename (`pipeline.runtime.atomic`).

    Args:
        model: The model.
        path: Destination ending in `.keras`.

    Returns:
        The destination.

    Raises:
        OutputWriteError: The file could not be written (disk full, read-only folder); the previous one is kept.
    """
    staged = atomic.Staged(path, suffix=".keras")
    try:
        staged.write(model.save)
        return staged.commit()
    finally:
        staged.discard()


def holds_saved_model_layer(path: str | Path) -> bool:
    """Whether a `.keras` file holds a `keras.layers.TFSMLayer` (a TF Hub or SavedModel backbone).

    Read from the file's `config.json` without building anything: a `.keras` file is a zip archive.
    """
    with zipfile.ZipFile(path) as archive:
        config = json.loads(archive.read("config.json"))

    def visit(node: Any) -> bool:
        if isinstance(node, dict):
            return node.get("class_name") == "TFSMLayer" or any(visit(value) for value in node.values())
        if isinstance(node, list):
            return any(visit(item) for item in node)
        return False

    return visit(config)


def export_saved_model(model: keras.Model, directory: str | Path) -> Path:
    """Writes a TF SavedModel (Keras 3's `model.export`) whose `serve` endpoint maps pixels to probabilities.

    Why a SavedModel next to the `.keras` file: it loads with `tf.saved_model.load` alone, in a process
    without Keras (TensorFlow Serving, a plain TensorFlow service), and keeps the preprocessing inside.
    It is written into a temporary folder beside `directory` and exchanged with the old one in one rename
    (`pipeline.runtime.atomic`), so a run killed mid-export never leaves half a SavedModel there, nor none.

    Args:
        model: The end-to-end model (0..255 RGB in, class probabilities out).
        directory: Destination folder (e.g. `models/saved_model`).

    Returns:
        The destination; `tf.saved_model.load(str(it)).serve(float32 batch)` gives the probabilities.

    Raises:
        OutputWriteError: The folder could not be written; the previous one is kept.
    """
    staged = atomic.Staged(directory, directory=True)
    try:
        staged.write(functools.partial(_write_saved_model, model))
        return staged.commit()
    finally:
        staged.discard()


def _write_saved_model(model: keras.Model, folder: Path) -> None:
    model.export(str(folder), format="tf_saved_model", verbose=False)


@contextlib.contextmanager
def staged_exports(model: keras.Model, keras_path: str | Path, saved_model_dir: str | Path) -> Iterator[None]:
    """Writes both exports beside their targets, runs the block, then puts them in place.

    Why: the register stage writes the exports before it adds a registry version (a full disk or a
    read-only `models/` then stops it before the registry holds anything), and puts them in place only
    once the version exists; if the block fails, the previous exports stay untouched.

    Args:
        model: The end-to-end model.
        keras_path: The `.keras` destination (`models/model.keras`).
        saved_model_dir: The SavedModel destination (`models/saved_model`).

    Raises:
        OutputWriteError: An export could not be written (before the block runs) or renamed into place.
    """
    keras_file = atomic.Staged(keras_path, suffix=".keras")
    try:
        folder = atomic.Staged(saved_model_dir, directory=True)
    except BaseException:
        keras_file.discard()
        raise
    try:
        keras_file.write(model.save)
        folder.write(functools.partial(_write_saved_model, model))
        yield
        folder.commit()
        keras_file.commit()
    finally:
        keras_file.discard()
        folder.discard()


def load_model(path: str | Path, *, safe_mode: bool = True) -> keras.Model:
    """Loads a `.keras` model saved by `save_model`.

    A model with a TF Hub or SavedModel backbone holds a TFSMLayer, which Keras loads only outside safe
    mode: the layer re-reads the SavedModel folder its config names, and a SavedModel's graph may run any
    TensorFlow op. Safe mode is lifted for such a file only, because the file is this pipeline's own output
    (the train stage wrote it) and the folder is the one the user named in `backbone.name`, already run by
    training. Any other model loads in safe mode.

    Args:
        path: The `.keras` file.
        safe_mode: Keras' safe mode; False for a model whose backbone came from a .keras file that needed it
            (a Lambda layer's code then runs again).

    Returns:
        The model, uncompiled.
    """
    path = Path(path)
    return keras.saving.load_model(path, compile=False, safe_mode=safe_mode and not holds_saved_model_layer(path))
