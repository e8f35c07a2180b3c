"""An IDX dataset (Fashion-MNIST by default) written out as PNG files in class folders.

Why: `data.kind: folder` is meant for a user's own image files, and a demo of it needs real content whose
result is known. Exporting Fashion-MNIST as `OUT/<class>/<index>.png` gives the folder source a real
dataset that the idx pipeline has already been measured on, so the two paths can be compared. The
console command `idx-to-png` (see `main`) runs it.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

from pipeline.data.files import USER_SPLITS
from pipeline.data.sources import ImageSource, load_idx_dataset
from pipeline.errors import USER_ERROR_EXIT, PipelineError

DEFAULT_SOURCE_DIR = "/usr/share/datasets/fashion-mnist"


class ExportError(PipelineError, ValueError):
    """An export setting out of range (`--per-class`, `--val-fraction`); the message quotes it."""


class OutputFolderError(PipelineError, FileExistsError):
    """The output folder already holds files: exporting into it would mix two datasets."""


# IDX part -> the split folders its images go to (train's images are shared out between train and val).
SPLIT_PARTS: dict[str, tuple[str, ...]] = {"train": ("train", "val"), "t10k": ("test",)}


def class_folder_name(name: str) -> str:
    """A class name made usable as one folder name.

    Why: Fashion-MNIST's class 0 is "T-shirt/top", and a slash would make a nested folder, which the folder
    source reads as part of class "T-shirt".

    Args:
        name: The class name.

    Returns:
        The name with path separators replaced by "_" ("T-shirt/top" -> "T-shirt_top").
    """
    return name.replace("/", "_").replace("\\", "_")


def _first_per_class(positions: np.ndarray, labels: np.ndarray, label: int, per_class: int | None) -> np.ndarray:
    chosen = positions[labels[positions] == label]
    return chosen if per_class is None else chosen[:per_class]


def _selection(
    source: ImageSource, *, per_class: int | None, splits: bool, val_fraction: float
) -> dict[str, list[tuple[int, np.ndarray]]]:
    """Split folder ("" without splits) -> (label, positions into `source`) per class, in file order."""
    everything = np.arange(len(source.labels))
    if not splits:
        return {
            "": [
                (label, _first_per_class(everything, source.labels, label, per_class))
                for label in range(len(source.class_names))
            ]
        }
    selection: dict[str, list[tuple[int, np.ndarray]]] = {name: [] for name in USER_SPLITS}
    for part, folders in SPLIT_PARTS.items():
        in_part = everything[source.parts == part]
        for label in range(len(source.class_names)):
            chosen = _first_per_class(in_part, source.labels, label, per_class)
            if folders == ("test",):
                selection["test"].append((label, chosen))
                continue
            # The last images of each class in file order are validation: deterministic, and stratified.
            val_count = math.ceil(len(chosen) * val_fraction)
            selection["train"].append((label, chosen[: len(chosen) - val_count]))
            selection["val"].append((label, chosen[len(chosen) - val_count :]))
    return selection


def export_png(
    source: ImageSource,
    out: str | Path,
    *,
    per_class: int | None = None,
    splits: bool = False,
    val_fraction: float = 0.1,
) -> dict[str, dict[str, int]]:
    """Writes the images of `source` as PNG files in class folders, ready for `data.kind: folder`.

    Without splits, every image of both parts goes to `out/<class>/<index>.png`, `index` being its position
    in `source` (train part first). With splits, `out/train/` and `out/val/` take the train part's images
    (the last `val_fraction` of each class, rounded up, are validation) and `out/test/` the t10k part's;
    `index` is then the image's index in its IDX file. The folder source needs all three of train/, val/
    and test/ once a train/ folder exists, which is why val/ is written too.

    Args:
        source: An IDX dataset from `load_idx_dataset` (parts "train" and "t10k").
        out: Folder to create; it must not exist or be empty, so no earlier export mixes in.
        per_class: At most this many images per class (the first in file order), from each part when
            splitting; None writes every image.
        splits: Whether to write train/, val/ and test/ folders.
        val_fraction: With splits, the share of each class's train-part images written to val/.

    Returns:
        Split folder ("" without splits) -> class folder -> number of files written; classes without an
        image get no folder.

    Raises:
        OutputFolderError: `out` exists and is not an empty folder (a `FileExistsError`).
        ExportError: `per_class` is below 1, or `val_fraction` is not strictly between 0 and 1 (a `ValueError`).
    """
    from PIL import Image

    out = Path(out)
    if per_class is not None and per_class < 1:
        raise ExportError(f"per_class must be at least 1; received {per_class}")
    if splits and not 0.0 < val_fraction < 1.0:
        raise ExportError(f"val_fraction must be strictly between 0 and 1; received {val_fraction}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise OutputFolderError(f"{out} already exists and is not an empty folder: choose a new one")
    counts: dict[str, dict[str, int]] = {}
    for split, per_label in _selection(source, per_class=per_class, splits=splits, val_fraction=val_fraction).items():
        counts[split] = {}
        for label, positions in per_label:
            if not len(positions):
                # An empty class folder would be reported as an empty class by the folder source.
                continue
            folder_name = class_folder_name(source.class_names[label])
            folder = out / split / folder_name
            folder.mkdir(parents=True, exist_ok=True)
            for position in positions:
                index = int(source.indices[position]) if splits else int(position)
                Image.fromarray(np.asarray(source.images[position], dtype=np.uint8)).save(folder / f"{index}.png")
            counts[split][folder_name] = len(positions)
    return counts


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="idx-to-png",
        description="Write an IDX dataset (Fashion-MNIST by default) as PNG class folders OUT/<class>/<index>.png, "
        "the layout data.kind: folder reads.",
        epilog="Then: dvc exp run -S data.kind=folder -S data.path=OUT (see the README).",
    )
    parser.add_argument("out", type=Path, help="folder to create (must not exist, or be empty)")
    parser.add_argument(
        "--source-dir",
        default=DEFAULT_SOURCE_DIR,
        help="folder of the four IDX files, .gz or plain (default: %(default)s)",
    )
    parser.add_argument(
        "--per-class",
        type=int,
        default=None,
        metavar="N",
        help="only the first N images of each class (of each IDX file with --splits); default: all",
    )
    parser.add_argument(
        "--splits",
        action="store_true",
        help="write train/ and val/ (from the train file) and test/ (from the t10k file) instead of one "
        "folder of classes; data.kind: folder then uses that split as given",
    )
    parser.add_argument(
        "--val-fraction",
        type=float,
        default=0.1,
        help="with --splits: share of each class's train-file images written to val/ (default: %(default)s)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """The `idx-to-png` console command.

    Args:
        argv: Arguments without the program name; None reads `sys.argv`.

    Returns:
        0 on success, 2 when the dataset or the output folder is unusable (the reason on stderr).
    """
    arguments = _parser().parse_args(argv)
    try:
        source = load_idx_dataset(arguments.source_dir)
        counts = export_png(
            source,
            arguments.out,
            per_class=arguments.per_class,
            splits=arguments.splits,
            val_fraction=arguments.val_fraction,
        )
    except PipelineError as error:
        print(f"error: {error}", file=sys.stderr)
        return USER_ERROR_EXIT
    sizes = ", ".join(f"{split or 'all'} {sum(per_class.values())}" for split, per_class in counts.items())
    classes = len({name for per_class in counts.values() for name in per_class})
    total = sum(sum(per_class.values()) for per_class in counts.values())
    print(f"wrote {total} PNGs of {classes} classes to {arguments.out} ({sizes})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
