"""DVC stage `prepare`: train/val/test split of the source images as a manifest, and the data report.

For image files (data.kind folder or csv) it also decodes every image once into the memmap cache that
the later stages read.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from pipeline import params
from pipeline.runtime import atomic
from stages._entry import DATA_REPORT, IMAGE_CACHE, MANIFEST, PARAMS, run_stage

if TYPE_CHECKING:
    from pathlib import Path

    from pipeline.data.report import DataReport
    from pipeline.data.sources import ImageSource
    from pipeline.params.data import DataParams


def main() -> None:
    data = params.load(PARAMS).data

    from pipeline.data.split import cap_training_rows, class_counts, manifest_rows, write_manifest

    # DVC declares the cache folder as an output: it exists for every kind, and never holds a stale cache.
    # It is built beside its place and swapped in whole (pipeline.runtime.atomic): a killed prepare leaves
    # the previous complete cache, never half of one; the manifest, written after it, matches it.
    with atomic.atomic_directory(IMAGE_CACHE) as cache_dir:
        if data.kind == "idx":
            source, split, report = _split_idx_files(data, cache_dir)
        else:
            source, split, report = _cache_image_files(data, cache_dir)
        try:
            rows = cap_training_rows(manifest_rows(source, split), data.train_size, seed=data.seed)
        except ValueError as error:
            raise params.ParamsError(str(error)) from None
    counts = class_counts(rows, source.class_names)
    split_sizes = {name: sum(per_class.values()) for name, per_class in counts.items()}
    report = replace(report, split_sizes=split_sizes, class_counts=counts)
    write_manifest(rows, MANIFEST)
    report.write(DATA_REPORT)
    skipped = len(report.details.get("skipped", []))
    print(f"split {split_sizes} of {report.source_images} images -> {MANIFEST} ({skipped} files skipped)")


def _split_idx_files(data: DataParams, cache_dir: Path) -> tuple[ImageSource, dict[str, np.ndarray], DataReport]:
    """The stratified split of IDX data; the cache folder gets only the files' digests."""
    from pipeline.data.report import DataReport
    from pipeline.data.sources import idx_file_digests
    from pipeline.data.split import stratified_split
    from stages._data import load_source

    source = load_source(data)
    try:
        split = stratified_split(
            source.labels,
            subset_size=data.subset_size,
            val_fraction=data.val_fraction,
            test_fraction=data.test_fraction,
            seed=data.seed,
            test_mask=source.parts == data.test_part if data.test_part is not None else None,
        )
    except ValueError as error:
        raise params.ParamsError(f"data: {error}") from None
    # Later stages read the IDX files, not this folder: the digests make it change when the files do.
    marker = {"kind": "idx", "sha256": idx_file_digests(data.path)}
    (cache_dir / "info.json").write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
    report = DataReport(
        kind=data.kind,
        path=data.path,
        source_images=len(source.labels),
        class_names=list(source.class_names),
        stored_shape=list(source.images.shape[1:]),
    )
    return source, split, report


def _cache_image_files(data: DataParams, cache_dir: Path) -> tuple[ImageSource, dict[str, np.ndarray], DataReport]:
    """Every usable image file decoded once into the cache, de-duplicated and split."""
    from pipeline.data.cache import build_cache
    from pipeline.data.files import scan_csv, scan_folder
    from pipeline.data.report import DataReport

    scan = scan_folder(data.path) if data.kind == "folder" else scan_csv(data.path)
    cached = build_cache(
        scan,
        cache_dir,
        size=data.stored_size,
        color=data.color,
        max_pixels=data.max_image_pixels,
        val_fraction=data.val_fraction,
        test_fraction=data.test_fraction,
        seed=data.seed,
        subset_size=data.subset_size,
    )
    found = DataReport.from_dict({"kind": data.kind, "path": data.path, "cache_dir": str(IMAGE_CACHE), **cached.report})
    return cached.source, cached.split, replace(found, source_images=cached.report["images_used"])


if __name__ == "__main__":
    run_stage(main)
