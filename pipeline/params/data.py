"""The `data` section: where the images come from and how they are split."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from pipeline.params.common import Fraction, PositiveInt, Section


class DataParams(Section):
    """Where the images come from, how image files are stored, and how they are split."""

    kind: Literal["idx", "folder", "csv"] = Field(
        default="idx",
        description="idx: the four MNIST-style files in source_dir; folder: class subfolders (or train/, val/, "
        "test/ of class subfolders) in path; csv: a file of path,label rows in path.",
    )
    source_dir: str = "/usr/share/datasets/fashion-mnist"
    path: str | None = Field(default=None, description="The folder (kind folder) or CSV file (kind csv).")
    stored_size: Annotated[int, Field(ge=8, le=1024)] = Field(
        default=96, description="Side of the square uint8 images the prepare stage caches (folder and csv)."
    )
    color: Literal["rgb", "grey"] = "rgb"
    max_image_pixels: PositiveInt = Field(
        default=40_000_000, description="Larger non-JPEG files are skipped unread (decompression-bomb guard)."
    )
    subset_size: PositiveInt | None = Field(
        default=None, description="Stratified subsample of all images; null keeps every image."
    )
    val_fraction: Fraction = 0.1
    test_fraction: Fraction = 0.1
    seed: int = 42

    @model_validator(mode="after")
    def _fractions_leave_training_data(self) -> DataParams:
        # Rounded, so that 0.7 + 0.2 (0.8999999999999999 in floats) is refused like 0.9.
        if round(self.val_fraction + self.test_fraction, 9) >= 0.9:
            raise ValueError(
                f"val_fraction + test_fraction is {self.val_fraction + self.test_fraction}; "
                "it must stay below 0.9 so that training data remains"
            )
        return self

    @model_validator(mode="after")
    def _path_matches_kind(self) -> DataParams:
        if self.kind in ("folder", "csv") and not self.path:
            what = "a folder of class subfolders" if self.kind == "folder" else "a CSV file of path,label rows"
            raise ValueError(f"kind is {self.kind!r}, so path must name {what}; received path {self.path!r}")
        if self.kind == "idx" and self.path is not None:
            raise ValueError(
                f"path is {self.path!r} but kind is 'idx' (which reads source_dir); set kind to 'folder' or "
                "'csv' to read path, or remove path"
            )
        return self
