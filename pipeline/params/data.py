"""The `data` section: where the images come from and how they are split."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from pipeline.data.sources import FASHION_MNIST_CLASSES
from pipeline.params.common import Fraction, PositiveInt, Section

IDX_DEFAULT_PATH = "/usr/share/datasets/fashion-mnist"


class DataParams(Section):
    """Where the images come from, how image files are stored, and how they are split."""

    kind: Literal["idx", "folder", "csv"] = Field(
        default="idx",
        description="idx: the four MNIST-style files in the folder path; folder: class subfolders (or train/, "
        "val/, test/ of class subfolders) in path; csv: a file of path,label rows in path.",
    )
    # One key names the data for every kind, so that dvc.yaml can make it a dependency of `prepare`
    # (`${data.path}`): DVC templates cannot choose between two keys, nor interpolate a null.
    path: str = Field(
        default=IDX_DEFAULT_PATH,
        min_length=1,
        description="The IDX folder (kind idx), the folder of images (kind folder) or the CSV file (kind csv).",
    )
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
    classes: list[str] | None = Field(
        default=None,
        description="idx: keep only these classes, labelled 0, 1, ... in this order; null keeps every class.",
    )
    test_part: Literal["t10k"] | None = Field(
        default=None,
        description="idx: the test split is every image of this part of the dataset (t10k: Fashion-MNIST's "
        "official test set), val and train come from the other part; null splits all images by test_fraction.",
    )
    val_fraction: Fraction = 0.1
    test_fraction: Fraction = 0.1
    train_size: PositiveInt | None = Field(
        default=None,
        description="Training images kept after the split (a stratified draw); val and test are untouched; null "
        "keeps them all.",
    )
    seed: int = 42

    @field_validator("classes")
    @classmethod
    def _classes_known(cls, classes: list[str] | None) -> list[str] | None:
        if classes is None:
            return None
        if len(set(classes)) != len(classes):
            raise ValueError("each class may be listed once")
        if len(classes) < 2:
            raise ValueError("keep at least 2 classes, or null for all")
        return classes

    @model_validator(mode="after")
    def _idx_only_options(self) -> DataParams:
        for key in ("classes", "test_part"):
            if getattr(self, key) is not None and self.kind != "idx":
                raise ValueError(
                    f"data.{key} works with kind idx only, and kind is {self.kind!r}; for a folder or a CSV, give it "
                    "only the images (and the train/ val/ test/ folders) you want"
                )
        if self.kind == "idx" and self.classes is not None:
            unknown = [name for name in self.classes if name not in FASHION_MNIST_CLASSES]
            if unknown:
                raise ValueError(
                    f"data.classes: {', '.join(map(repr, unknown))} not in the dataset; allowed: "
                    f"{', '.join(FASHION_MNIST_CLASSES)}"
                )
        if self.test_part is not None:
            clashing = sorted({"test_fraction", "subset_size"} & self.model_fields_set)
            if clashing:
                raise ValueError(
                    f"data.test_part takes every {self.test_part} image as the test split, so "
                    f"data.{' and data.'.join(clashing)} would be ignored; remove it (data.train_size caps the "
                    "training images)"
                )
        return self

    @model_validator(mode="after")
    def _fractions_leave_training_data(self) -> DataParams:
        # Rounded, so that 0.7 + 0.2 (0.8999999999999999 in floats) is refused like 0.9.
        if round(self.val_fraction + self.test_fraction, 9) >= 0.9:
            raise ValueError(
                f"val_fraction + test_fraction is {self.val_fraction + self.test_fraction}; "
                "it must stay below 0.9 so that training data remains"
            )
        return self

    @model_validator(mode="before")
    @classmethod
    def _source_dir_is_now_path(cls, data: Any) -> Any:
        if isinstance(data, dict) and "source_dir" in data:
            raise ValueError(
                f"data.source_dir ({data['source_dir']!r}) is now data.path, which names the data of every kind "
                "(the IDX folder for kind idx)"
            )
        return data

    @model_validator(mode="after")
    def _path_matches_kind(self) -> DataParams:
        # The IDX default left in place is the likely slip when switching kind on the command line.
        if self.kind in ("folder", "csv") and self.path == IDX_DEFAULT_PATH:
            what = "a folder of class subfolders" if self.kind == "folder" else "a CSV file of path,label rows"
            raise ValueError(
                f"kind is {self.kind!r}, so path must name {what}; received path {self.path!r}, the IDX default"
            )
        return self
