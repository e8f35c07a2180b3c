"""The image files a prediction reads: files as given, folders walked for their images.

Why apart from the inference: what the user named on the command line is turned into files here, with
one reason for each path that holds nothing to classify, before any model is loaded or run.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.data.files import IMAGE_EXTENSIONS


@dataclass(frozen=True)
class MissingInput:
    """A path given that holds no image to classify, and why."""

    path: Path
    error: str


def collect_inputs(paths: Sequence[str | Path]) -> list[Path | MissingInput]:
    """Expands folders into their image files (recursively, sorted, hidden entries left out).

    Args:
        paths: Files and folders, as given on the command line.

    Returns:
        For each image to classify its path, in order; for a path that does not exist or a folder
        without images, a `MissingInput` holding the reason.
    """
    collected: list[Path | MissingInput] = []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            found = _images_in(path)
            if found:
                collected.extend(found)
            else:
                extensions = ", ".join(sorted(IMAGE_EXTENSIONS))
                collected.append(MissingInput(path, error=f"folder without image files ({extensions})"))
        elif path.is_file():
            collected.append(path)
        else:
            collected.append(MissingInput(path, error="no such file or folder"))
    return collected


def _images_in(folder: Path) -> list[Path]:
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(name for name in dirs if not name.startswith("."))
        found.extend(
            Path(root) / name
            for name in sorted(files)
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS
        )
    return found
