"""DVC stage `prepare`: stratified train/val/test split of the source images, as a manifest."""

from __future__ import annotations

import json

from pipeline import params
from stages._entry import DATA_REPORT, MANIFEST, PARAMS, run_stage


def main() -> None:
    data = params.load(PARAMS).data

    from pipeline.data.sources import load_idx_dataset
    from pipeline.data.split import class_counts, manifest_rows, stratified_split, write_manifest

    source = load_idx_dataset(data.source_dir)
    split = stratified_split(
        source.labels,
        subset_size=data.subset_size,
        val_fraction=data.val_fraction,
        test_fraction=data.test_fraction,
        seed=data.seed,
    )
    rows = manifest_rows(source, split)
    write_manifest(rows, MANIFEST)
    counts = class_counts(rows, source.class_names)
    report = {
        "source_dir": data.source_dir,
        "source_images": len(source.labels),
        "image_shape": list(source.images.shape[1:]),
        "class_names": list(source.class_names),
        "split_sizes": {name: sum(per_class.values()) for name, per_class in counts.items()},
        "class_counts": counts,
    }
    DATA_REPORT.parent.mkdir(parents=True, exist_ok=True)
    DATA_REPORT.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"split {report['split_sizes']} of {report['source_images']} images -> {MANIFEST}")


if __name__ == "__main__":
    run_stage(main)
