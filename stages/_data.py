"""Where the stages after `prepare` read their images from: the IDX files, or the prepare stage's cache.

Why: train, evaluate and lr_find select rows through the same manifest whatever the source kind; only
how the `ImageSource` is opened differs, and that choice lives here once.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from stages._entry import IMAGE_CACHE

if TYPE_CHECKING:
    from pipeline.data.sources import ImageSource
    from pipeline.params.data import DataParams


def load_source(data: DataParams) -> ImageSource:
    """Opens the images the manifest points into.

    Args:
        data: The validated `data` section.

    Returns:
        The IDX dataset read into memory, only `data.classes` when given (kind idx), or the image cache
        mapped from disk (folder, csv).

    Raises:
        DatasetNotFoundError: The IDX files or the cache are missing.
    """
    if data.kind == "idx":
        from pipeline.data.sources import load_idx_dataset, select_classes

        source = load_idx_dataset(data.path)
        return select_classes(source, data.classes) if data.classes is not None else source
    from pipeline.data.cache import open_cache

    return open_cache(IMAGE_CACHE)


def source_sha256(data: DataParams) -> str:
    """The digest of the data source, from what the prepare stage wrote into the cache folder.

    IDX: one digest over the files' own SHA-256s (the marker's `sha256`); folder and CSV: the cache's
    digest of its source files' classes and contents (`source_sha256`).

    Raises:
        DatasetNotFoundError: The prepare stage has not written the cache folder.
    """
    import hashlib

    from pipeline.data.cache import CACHE_INFO
    from pipeline.data.sources import DatasetNotFoundError

    info_path = IMAGE_CACHE / CACHE_INFO
    if not info_path.is_file():
        raise DatasetNotFoundError(f"no {info_path}: run the prepare stage first")
    info = json.loads(info_path.read_text(encoding="utf-8"))
    if data.kind == "idx":
        lines = "".join(f"{name}\t{digest}\n" for name, digest in info["sha256"].items())
        return hashlib.sha256(lines.encode()).hexdigest()
    return str(info["source_sha256"])
