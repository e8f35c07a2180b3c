"""The `backbone` section: the pretrained network to start from, its weights and its input size.

`name` decides the kind of backbone (`pipeline.backbones.names.backbone_kind`): a registered name, a TF Hub
handle or SavedModel directory, or a `.keras` file. Each of the other keys applies to some kinds only, and
one written for a kind it does not apply to is refused rather than silently ignored. A field validator runs
only on a value the user wrote (defaults are not validated), which is what makes that check possible.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, ValidationInfo, field_validator

from pipeline.backbones.names import (
    BACKBONE_BLOCKS,
    BACKBONE_MIN_SIZES,
    HUB_URL_SCHEMES,
    SAVED_MODEL_BLOCK,
    BackboneKind,
    backbone_kind,
)
from pipeline.params.common import Section

_KIND_WORDS: dict[str, str] = {
    "registered": "a registered backbone",
    "hub": "a TF Hub handle or SavedModel directory",
    "keras_file": "a .keras file",
}


def _kind_of(info: ValidationInfo) -> tuple[str, BackboneKind] | None:
    """`backbone.name` and its kind, or None when the name itself was invalid (its own error says why)."""
    name = info.data.get("name")
    return None if name is None else (name, backbone_kind(name))


def _applies_to(info: ValidationInfo, kinds: tuple[BackboneKind, ...], what: str) -> None:
    found = _kind_of(info)
    if found is not None and found[1] not in kinds:
        name, kind = found
        raise ValueError(f"applies to {what} only; {name} is {_KIND_WORDS[kind]}")


class BackboneParams(Section):
    """Which pretrained network to start from, with which weights, and the input size it sees."""

    name: str = Field(
        default="efficientnet_lite0",
        description="A registered name, a TF Hub handle (http(s):// URL), a SavedModel directory, or a .keras file.",
    )
    weights: str = Field(
        default="imagenet",
        description="Registered backbones: imagenet (keras.applications: from KERAS_HOME/models), none (random "
        "initialisation), or the path of a Keras weights file.",
    )
    image_size: Annotated[int, Field(ge=32, le=1024)] = 96
    cache_dir: str = Field(
        default=".cache/backbones",
        description="Converted weights; TF Hub downloads go to <cache_dir>/tfhub unless TFHUB_CACHE_DIR is set.",
    )
    signature: str | None = Field(
        default=None,
        description="TF Hub / SavedModel: the endpoint the backbone calls; unset: serve if present, else "
        "serving_default.",
    )
    training_signature: str | None = Field(
        default=None,
        description="TF Hub / SavedModel: the endpoint called while an unfrozen backbone trains (it runs "
        "BatchNorm in training mode, so bn_policy trainable can be honoured).",
    )
    output_key: str | None = Field(
        default=None, description="TF Hub / SavedModel: which output to use when the signature returns several."
    )
    input_range: tuple[float, float] | None = Field(
        default=None,
        description="TF Hub / SavedModel / .keras: what 0..255 pixels are mapped to, linearly; unset: [0, 1] for "
        "TF Hub handles and SavedModels (the TF Hub image convention), [0, 255] for .keras files.",
    )

    @field_validator("name")
    @classmethod
    def _name_is_a_backbone(cls, name: str) -> str:
        kind = backbone_kind(name)
        if kind == "hub" and not name.startswith(HUB_URL_SCHEMES) and not (Path(name) / "saved_model.pb").is_file():
            raise ValueError(
                "this directory holds no saved_model.pb, so it is not a SavedModel; name a SavedModel directory "
                "(saved_model.pb and variables/), a TF Hub handle (an http:// or https:// URL), a registered "
                "backbone or a .keras file"
            )
        if kind == "keras_file":
            raise ValueError(".keras backbones are not supported yet")
        return name

    @field_validator("weights")
    @classmethod
    def _weights_exist(cls, weights: str, info: ValidationInfo) -> str:
        _applies_to(info, ("registered",), "registered backbones (a SavedModel or .keras file holds its weights)")
        if weights not in ("imagenet", "none") and not Path(weights).is_file():
            raise ValueError("not a file; allowed: imagenet, none, or the path of a Keras weights file")
        return weights

    @field_validator("image_size")
    @classmethod
    def _input_size_fits(cls, image_size: int, info: ValidationInfo) -> int:
        name = info.data.get("name")
        if name in BACKBONE_MIN_SIZES and image_size < BACKBONE_MIN_SIZES[name]:
            raise ValueError(f"{name} takes inputs of at least {BACKBONE_MIN_SIZES[name]} px")
        return image_size

    @field_validator("signature", "training_signature", "output_key")
    @classmethod
    def _hub_only(cls, value: str | None, info: ValidationInfo) -> str | None:
        _applies_to(info, ("hub",), "TF Hub handles and SavedModel directories")
        return value

    @field_validator("input_range")
    @classmethod
    def _input_range_is_an_interval(
        cls, input_range: tuple[float, float] | None, info: ValidationInfo
    ) -> tuple[float, float] | None:
        _applies_to(info, ("hub", "keras_file"), "TF Hub handles, SavedModel directories and .keras files")
        if input_range is not None and not input_range[0] < input_range[1]:
            raise ValueError("give [low, high] with low < high, e.g. [0, 1] or [-1, 1]")
        return input_range

    def kind(self) -> BackboneKind:
        """Which kind of backbone `name` names (see `pipeline.backbones.names.backbone_kind`)."""
        return backbone_kind(self.name)

    def block_names(self) -> tuple[str, ...]:
        """The backbone's blocks top-down, as the registry will build them; known before TensorFlow loads.

        Returns:
            A registered backbone's block groups; the one opaque block of a TF Hub handle or SavedModel.

        Raises:
            ValueError: A `.keras` backbone (not supported yet).
        """
        kind = self.kind()
        if kind == "registered":
            return BACKBONE_BLOCKS[self.name]
        if kind == "hub":
            return (SAVED_MODEL_BLOCK,)
        raise ValueError(".keras backbones are not supported yet")
