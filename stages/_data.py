"""Where the stages after `prepare` read their images from: the IDX files, or the prepare stage's cache.

Why: train, evaluate and lr_find select rows through the same manifest whatever the source kind; only
how the `ImageSource` is opened differs, and that choice lives here once.
"""

from __future__ import annotations

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

        source = load_idx_dataset(data.source_dir)
        return select_classes(source, data.classes) if data.classes is not None else source
    from pipeline.data.images import open_cache

    return open_cache(IMAGE_CACHE)
