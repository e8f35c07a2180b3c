"""The `data` section: where the images come from and how they are split."""

from __future__ import annotations

from pydantic import Field, model_validator

from pipeline.params.common import Fraction, PositiveInt, Section


class DataParams(Section):
    """Where the images come from and how they are split."""

    source_dir: str = "/usr/share/datasets/fashion-mnist"
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
