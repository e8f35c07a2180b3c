"""Reading a `.keras` file: the zip's `config.json`, which layers `model.weights.h5` holds weights for, and
what loading the file would run.

Why without TensorFlow: params validation reads the file in about a second, before TensorFlow loads. A
`.keras` file is a zip holding `config.json` (the architecture) and `model.weights.h5`, so `zipfile`,
`json` and `h5py` suffice. The file is refused in safe mode when its config names a class whose
deserialisation runs code from the file (`UNSAFE_CLASSES`).
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

from pipeline.backbones.errors import KerasFileError
from pipeline.backbones.keras_archive.flatten import Flattener, is_model
from pipeline.backbones.keras_archive.graph import KerasArchive

# Class names whose deserialisation runs code from the file, and what that code is.
UNSAFE_CLASSES: dict[str, str] = {
    "Lambda": "the Python bytecode of a Lambda layer's function",
    "TFSMLayer": "the TensorFlow graph of the SavedModel a TFSMLayer points to",
    "__lambda__": "the Python bytecode of a lambda stored in a layer's config",
}


def _find_unsafe(value: Any, where: str) -> Iterator[str]:
    if isinstance(value, dict):
        class_name = value.get("class_name")
        config = value.get("config")
        name = config.get("name", where) if isinstance(config, dict) else where
        if class_name in UNSAFE_CLASSES:
            yield f"{class_name} {name!r} ({UNSAFE_CLASSES[class_name]})"
            return
        for item in value.values():
            yield from _find_unsafe(item, name if isinstance(name, str) else where)
    elif isinstance(value, list):
        for item in value:
            yield from _find_unsafe(item, where)


def _weighted_groups(archive: zipfile.ZipFile) -> set[str] | None:
    """Groups of model.weights.h5 that hold at least one array, or None when it can't be read."""
    import h5py

    if "model.weights.h5" not in archive.namelist():
        return None
    groups: set[str] = set()

    def visit(name: str, item: Any) -> None:
        if isinstance(item, h5py.Dataset):
            parts = name.split("/")
            groups.update("/".join(parts[:end]) for end in range(1, len(parts)))

    try:
        with archive.open("model.weights.h5") as raw, h5py.File(raw, "r") as weights:
            weights.visititems(visit)
    except OSError:
        return None
    return groups


@cache
def _read(path: str, _stamp: tuple[int, int]) -> KerasArchive:
    try:
        with zipfile.ZipFile(path) as archive:
            if "config.json" not in archive.namelist():
                raise KerasFileError(
                    f"{path} holds no config.json: not a Keras 3 .keras file (a zip of config.json, metadata.json "
                    "and model.weights.h5, as model.save('x.keras') writes it)"
                )
            config = json.loads(archive.read("config.json"))
            weighted = _weighted_groups(archive)
    except zipfile.BadZipFile:
        raise KerasFileError(
            f"{path} is not a zip archive: not a Keras 3 .keras file (an HDF5 .h5 model or a SavedModel folder is "
            "not read here)"
        ) from None
    if not isinstance(config, dict) or not is_model(config):
        class_name = config.get("class_name") if isinstance(config, dict) else type(config).__name__
        raise KerasFileError(
            f"{path} holds a {class_name} model with no layer graph in its config; only functional and Sequential "
            "models can be cut into a backbone"
        )
    flattener = Flattener(path, weighted)
    model_name = str(config["config"].get("name", "model"))
    outputs = flattener.model(config, (model_name,), None, "")
    if len(outputs) != 1:
        raise KerasFileError(f"{path}: its model has {len(outputs)} outputs; a backbone file needs one")
    shape = flattener.input_shape or ()
    if len(shape) != 3 or shape[2] not in (3, None):
        raise KerasFileError(
            f"{path}: its model takes inputs of shape {shape}; a backbone takes RGB images, (height, width, 3)"
        )
    return KerasArchive(
        path=path,
        model_name=model_name,
        layers=tuple(flattener.layers),
        output=outputs[0],
        input_shape=shape,
        unsafe=tuple(_find_unsafe(config, model_name)),
    )


def read_keras_archive(path: str | Path) -> KerasArchive:
    """Reads a `.keras` file's graph (cached while the file is unchanged).

    Args:
        path: The file.

    Returns:
        Its flattened graph.

    Raises:
        KerasFileError: No such file, not a Keras 3 `.keras` file, or a model that can't be a backbone
            (subclassed, several inputs or outputs, shared layers, never built).
    """
    path = str(path)
    try:
        status = Path(path).stat()
    except OSError:
        raise KerasFileError(f"{path}: no such file (a relative path starts at the folder the stage runs in)") from None
    if not Path(path).is_file():
        raise KerasFileError(f"{path} is not a file")
    return _read(path, (status.st_mtime_ns, status.st_size))
