"""What a user of a trained model needs besides its weights: the class names and the images it learnt from.

Why: the exported model maps pixels to probabilities by index; to print "Ankle boot" instead of "9",
and to read a new image file exactly the way the training images were read (grey or RGB, stored at
which size before the resize to the model's input), `predict` needs this card. The register stage
builds it from the prepare stage's data report and logs it as the MLflow model's metadata, so it
travels with every registered version and with `runs:/ID/model`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pipeline.errors import PipelineError

if TYPE_CHECKING:
    from pipeline.data.report import DataReport

METADATA_KEY = "model_card"


class ModelCardError(PipelineError, ValueError):
    """Raised when a data report or metadata entry does not describe a model card."""


@dataclass(frozen=True)
class ModelCard:
    """Class names and the shape of the stored training images of one model.

    Attributes:
        class_names: Output index -> class name.
        stored_shape: Shape of one training image as the data source held it before the model's resize:
            (height, width) for grey images (Fashion-MNIST's (28, 28)), (height, width, 3) for RGB.
    """

    class_names: tuple[str, ...]
    stored_shape: tuple[int, ...]

    @property
    def color(self) -> Literal["rgb", "grey"]:
        """How a new image is converted before it is fed: like the training images were."""
        return "rgb" if len(self.stored_shape) == 3 else "grey"

    @property
    def stored_size(self) -> int | None:
        """Side of the square stored images; None when they are not square (then images go straight to
        the model's size)."""
        height, width = self.stored_shape[:2]
        return height if height == width else None

    def to_metadata(self) -> dict[str, Any]:
        """The card as JSON-friendly MLflow model metadata (`{"model_card": {...}}`)."""
        return {METADATA_KEY: {"class_names": list(self.class_names), "stored_shape": list(self.stored_shape)}}

    @classmethod
    def from_metadata(cls, metadata: dict[str, Any] | None) -> ModelCard | None:
        """Reads the card back from MLflow model metadata.

        Args:
            metadata: The `metadata` of an MLflow model; None or a dict without the card for models
                logged before cards existed.

        Returns:
            The card, or None when the metadata holds none.

        Raises:
            ModelCardError: The metadata holds a malformed card.
        """
        if not metadata or METADATA_KEY not in metadata:
            return None
        entry = metadata[METADATA_KEY]
        if not isinstance(entry, dict):
            raise ModelCardError(f"model metadata {METADATA_KEY} is not a mapping: {entry!r}")
        return cls._checked(
            entry.get("class_names"), entry.get("stored_shape"), source=f"model metadata {METADATA_KEY}"
        )

    @classmethod
    def from_data_report(cls, report: DataReport) -> ModelCard:
        """Builds the card from the prepare stage's data report (`pipeline.data.report`).

        Args:
            report: The report: its class names and stored image shape are the card's.

        Returns:
            The card.

        Raises:
            ModelCardError: The report lacks the class names or the image shape.
        """
        return cls._checked(report.class_names, report.stored_shape, source="data report")

    @classmethod
    def _checked(cls, class_names: Any, shape: Any, *, source: str) -> ModelCard:
        if not isinstance(class_names, list) or not class_names or not all(isinstance(n, str) for n in class_names):
            raise ModelCardError(f"{source} has no list of class names (class_names: {class_names!r})")
        valid_shape = (
            isinstance(shape, list)
            and len(shape) in (2, 3)
            and all(isinstance(side, int) and side > 0 for side in shape)
            and (len(shape) == 2 or shape[2] == 3)
        )
        if not valid_shape:
            raise ModelCardError(
                f"{source} has no image shape [height, width] or [height, width, 3] (received {shape!r})"
            )
        return cls(class_names=tuple(class_names), stored_shape=tuple(shape))
