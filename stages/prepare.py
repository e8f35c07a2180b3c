"""DVC stage `prepare`: train/val/test split of the source images as a manifest, and the data report.

For image files (data.kind folder or csv) it also decodes every image once into the memmap cache that
the later stages read.
"""

from __future__ import annotations

import json
import shutil

from pipeline import params
from stages._entry import DATA_REPORT, IMAGE_CACHE, MANIFEST, PARAMS, run_stage


def main() -> None:
    data = params.load(PARAMS).data

    from pipeline.data.split import cap_training_rows, class_counts, manifest_rows, stratified_split, write_manifest

    # DVC declares the cache folder as an output: it exists for every kind, and never holds a stale cache.
    shutil.rmtree(IMAGE_CACHE, ignore_errors=True)
    IMAGE_CACHE.mkdir(parents=True)
    if data.kind == "idx":
        from pipeline.data.sources import idx_file_digests
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
        (IMAGE_CACHE / "info.json").write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
        rows = manifest_rows(source, split)
        report = {
            "kind": data.kind,
            "path": data.path,
            "source_images": len(source.labels),
            "image_shape": list(source.images.shape[1:]),
            "class_names": list(source.class_names),
        }
    else:
        from pipeline.data.cache import build_cache
        from pipeline.data.files import scan_csv, scan_folder

        scan = scan_folder(data.path) if data.kind == "folder" else scan_csv(data.path)
        cached = build_cache(
            scan,
            IMAGE_CACHE,
            size=data.stored_size,
            color=data.color,
            max_pixels=data.max_image_pixels,
            val_fraction=data.val_fraction,
            test_fraction=data.test_fraction,
            seed=data.seed,
            subset_size=data.subset_size,
        )
        source = cached.source
        rows = manifest_rows(source, cached.split)
        report = {"kind": data.kind, "path": data.path, "cache_dir": str(IMAGE_CACHE), **cached.report}
        report["source_images"] = report["images_used"]
    try:
        rows = cap_training_rows(rows, data.train_size, seed=data.seed)
    except ValueError as error:
        raise params.ParamsError(str(error)) from None
    counts = class_counts(rows, source.class_names)
    report["split_sizes"] = {name: sum(per_class.values()) for name, per_class in counts.items()}
    report["class_counts"] = counts
    write_manifest(rows, MANIFEST)
    DATA_REPORT.parent.mkdir(parents=True, exist_ok=True)
    DATA_REPORT.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    skipped = len(report.get("skipped", []))
    print(f"split {report['split_sizes']} of {report['source_images']} images -> {MANIFEST} ({skipped} files skipped)")


if __name__ == "__main__":
    run_stage(main)
