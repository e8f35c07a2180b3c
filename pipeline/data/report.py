"""`reports/data_report.json`: what the prepare stage found and split, read back by the stages after it.

Why a type: the report is written by `prepare` and read by `register` (the model card's class names and
stored image shape), by `tl-predict --data-report`, and by users; one class names its fields once. The
shape is stored under `image_shape` for IDX data (the arrays' own) and under `stored_shape` for image
files (the decoded cache's), as the report has always named them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.runtime import atomic

# The fields with a name of their own; the others are the details of the data kind (the cache's report).
_NAMED = ("kind", "path", "source_images", "image_shape", "stored_shape", "class_names", "split_sizes", "class_counts")


@dataclass(frozen=True)
class DataReport:
    """The data a run was prepared from.

    Attributes:
        kind: `data.kind`: idx, folder or csv.
        path: `data.path` as given.
        source_images: Images of the source that took part (after classes were selected or files skipped).
        class_names: Label index -> class name.
        stored_shape: One stored image's shape: (height, width) grey, or (height, width, 3) RGB.
        split_sizes: Split -> number of images.
        class_counts: Split -> class name -> number of images.
        details: What else the data kind reports (for image files: the cache folder, files found and
            skipped with their reasons, duplicates, original sizes and modes).
    """

    kind: str
    path: str
    source_images: int
    class_names: list[str]
    stored_shape: list[int]
    split_sizes: dict[str, int] = field(default_factory=dict)
    class_counts: dict[str, dict[str, int]] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The JSON document."""
        shape_key = "image_shape" if self.kind == "idx" else "stored_shape"
        return {
            "kind": self.kind,
            "path": self.path,
            "source_images": self.source_images,
            shape_key: list(self.stored_shape),
            "class_names": list(self.class_names),
            "split_sizes": dict(self.split_sizes),
            "class_counts": dict(self.class_counts),
            **self.details,
        }

    @classmethod
    def from_dict(cls, document: dict[str, Any]) -> DataReport:
        """The report of a parsed document; values are taken as they are (the model card checks what it reads).

        Args:
            document: The parsed JSON of a data report (of either shape key).

        Returns:
            The report; a missing field is None.
        """
        return cls(
            kind=document.get("kind"),
            path=document.get("path"),
            source_images=document.get("source_images"),
            class_names=document.get("class_names"),
            stored_shape=document.get("stored_shape", document.get("image_shape")),
            split_sizes=document.get("split_sizes", {}),
            class_counts=document.get("class_counts", {}),
            details={key: value for key, value in document.items() if key not in _NAMED},
        )

    def write(self, path: Path) -> None:
        """Writes the report as JSON (its folder is made when missing; non-ASCII class names kept)."""
        atomic.write_text(path, json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n")

    @classmethod
    def read(cls, path: Path) -> DataReport:
        """Reads a report `write` wrote."""
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
