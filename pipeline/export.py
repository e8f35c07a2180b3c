"""Exported models: preprocessing folded in, written atomically.

Why: a model in the registry or in `models/` must be usable without this repository: it takes RGB
pixels on 0..255 at its input size and applies the backbone's own scaling itself. And a run killed
mid-save must never leave a truncated `.keras` file where DVC or a user expects a model.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

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
    return keras.Model(pixels, classifier(preprocessing(pixels)), name="classifier")


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


def load_model(path: str | Path, *, safe_mode: bool = True) -> keras.Model:
    """Loads a `.keras` model saved by `save_model`.

    Args:
        path: The file.
        safe_mode: Keras' safe mode; False for a model whose backbone came from a .keras file that needed it
            (a Lambda layer's code then runs again).
    """
    return keras.saving.load_model(Path(path), compile=False, safe_mode=safe_mode)
