"""Exported models: preprocessing folded in, written atomically, as `.keras` and as a TF SavedModel.

Why: a model in the registry or in `models/` must be usable without this repository: it takes RGB
pixels on 0..255 at its input size and applies the backbone's own scaling itself. And a run killed
mid-save must never leave a truncated `.keras` file where DVC or a user expects a model. The
SavedModel serves where Keras is not installed (TensorFlow Serving, `tf.saved_model.load`).

A model on a TF Hub or SavedModel backbone is the exception to "usable without this repository": its file
holds the fine-tuned weights but only the path of the SavedModel, which must still exist where it was.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import keras


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
    """Saves a `.keras` file through a temporary file and an atomic rename.

    Args:
        model: The model.
        path: Destination ending in `.keras`.

    Returns:
        The destination.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(suffix=".keras", dir=path.parent)
    os.close(handle)
    try:
        model.save(temporary)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    return path


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
    It is written into a temporary folder beside `directory` and renamed into place, so a run killed
    mid-export never leaves half a SavedModel there (an existing one is swapped out, then deleted).

    Args:
        model: The end-to-end model (0..255 RGB in, class probabilities out).
        directory: Destination folder (e.g. `models/saved_model`).

    Returns:
        The destination; `tf.saved_model.load(str(it)).serve(float32 batch)` gives the probabilities.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent))
    exported, previous = temporary / "model", temporary / "previous"
    try:
        model.export(str(exported), format="tf_saved_model", verbose=False)
        if directory.exists():
            os.replace(directory, previous)
        try:
            os.replace(exported, directory)
        except BaseException:
            if previous.exists():
                os.replace(previous, directory)
            raise
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    return directory


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
