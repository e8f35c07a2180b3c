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
        The IDX dataset read into memory (kind idx), or the image cache mapped from disk (folder, csv).

    Raises:
        DatasetNotFoundError: The IDX files or the cache are missing.
    """
    if data.kind == "idx":
        from pipeline.data.sources import load_idx_dataset

        return load_idx_dataset(data.source_dir)
    from pipeline.data.images import open_cache

    return open_cache(IMAGE_CACHE)


def source_sha256(data: DataParams) -> str:
    """The digest of the data source: the IDX files' bytes, or the image cache's digest of its source files.

    Raises:
        DatasetNotFoundError: The IDX files or the cache are missing.
    """
    from pipeline.provenance import sha256_of_files

    if data.kind == "idx":
        from pipeline.data.sources import idx_files

        return sha256_of_files(idx_files(data.source_dir))
    from pipeline.data.images import CACHE_INFO

    info = json.loads((IMAGE_CACHE / CACHE_INFO).read_text(encoding="utf-8"))
    return str(info["source_sha256"])
