"""The `backbone` section: the pretrained network to start from, its weights and its input size.

`name` decides the kind (`pipeline.backbones.names.backbone_kind`): a registered name, a TF Hub handle
or SavedModel directory, or a local `.keras` file. Each other key applies to some kinds only, and setting
it for another kind is an error rather than silently ignored. A `.keras` file is read here, without
TensorFlow (`pipeline.backbones.keras_archive`), so that a missing file, an image size it can't take, an
unknown cut layer, a bad block list or a file needing `safe_mode: false` stops validation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, ValidationInfo, field_validator, model_validator

from pipeline.backbones.errors import KerasFileError
from pipeline.backbones.keras_archive import archive_blocks, read_keras_archive
from pipeline.backbones.names import (
    BACKBONE_BLOCKS,
    BACKBONE_MIN_SIZES,
    HUB_URL_SCHEMES,
    SAVED_MODEL_BLOCK,
    BackboneKind,
    backbone_kind,
)
from pipeline.params.common import Section

# Key -> the kinds of backbone it applies to.
_APPLIES_TO: dict[str, tuple[BackboneKind, ...]] = {
    "weights": ("registered",),
    "signature": ("hub",),
    "training_signature": ("hub",),
    "output_key": ("hub",),
    "input_range": ("hub", "keras_file"),
    "cut_layer": ("keras_file",),
    "block_prefixes": ("keras_file",),
    "safe_mode": ("keras_file",),
    "reinitialize": ("keras_file",),
}
# Kind -> (what the kind's names are, in the plural, for "applies to ..."; one of them).
_KIND_WORDS: dict[str, tuple[tuple[str, ...], str]] = {
    "registered": (("registered backbones",), "a registered backbone"),
    "hub": (("TF Hub handles", "SavedModel directories"), "a TF Hub handle or SavedModel directory"),
    "keras_file": ((".keras files",), "a .keras file"),
}


def _listed(items: list[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


_HINTS: dict[tuple[str, str], str] = {
    ("weights", "keras_file"): " (a .keras file brings its own weights; reinitialize: true draws fresh ones)",
    ("weights", "hub"): " (a SavedModel holds its own weights)",
}


class BackboneParams(Section):
    """Which pretrained network to start from, with which weights, and the input size it sees."""

    name: str = Field(
        default="efficientnet_lite0",
        description="A registered backbone, a TF Hub handle (an http(s):// URL), a SavedModel directory, or the "
        "path of a local .keras file.",
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
        "TF Hub handles and SavedModels (the TF Hub image convention), [0, 255] for .keras files (a model this "
        "pipeline exported holds its own preprocessing layer).",
    )
    cut_layer: str | None = Field(
        default=None,
        description=".keras files: the backbone's last layer; null: the layer feeding the file's last layer "
        "(the classifier is cut off).",
    )
    block_prefixes: list[str] | None = Field(
        default=None,
        description=".keras files: layer-name prefixes of the blocks, top-down; null: one block per layer with "
        "weights (layers without weights join the block below them).",
    )
    safe_mode: bool = Field(
        default=True,
        description=".keras files: Keras' safe mode; false lets a file holding a Lambda layer or a TFSMLayer load "
        "(it runs code from the file).",
    )
    reinitialize: bool = Field(
        default=False,
        description=".keras files: the same architecture with every weight drawn afresh by its layer's initialiser "
        "(training from scratch), instead of the file's weights.",
    )

    @field_validator("name")
    @classmethod
    def _name_has_a_kind(cls, name: str) -> str:
        kind = backbone_kind(name)
        if kind == "hub" and not name.startswith(HUB_URL_SCHEMES) and not (Path(name) / "saved_model.pb").is_file():
            raise ValueError(
                "this directory holds no saved_model.pb, so it is not a SavedModel; name a SavedModel directory "
                "(saved_model.pb and variables/), a TF Hub handle (an http:// or https:// URL), a registered "
                "backbone or a .keras file"
            )
        if kind == "keras_file":
            try:
                read_keras_archive(name)
            except KerasFileError as error:
                raise ValueError(
                    f"{error}; allowed: a registered backbone, a TF Hub handle, or an existing .keras file"
                ) from None
        return name

    @field_validator("weights")
    @classmethod
    def _weights_exist(cls, weights: str) -> str:
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

    @field_validator("input_range")
    @classmethod
    def _range_rises(cls, input_range: tuple[float, float] | None) -> tuple[float, float] | None:
        if input_range is not None and not input_range[0] < input_range[1]:
            raise ValueError("give [low, high] with low < high, e.g. [0, 1] or [-1, 1]")
        return input_range

    @field_validator("block_prefixes")
    @classmethod
    def _prefixes_distinct(cls, prefixes: list[str] | None) -> list[str] | None:
        if prefixes is not None and (not prefixes or any(not prefix for prefix in prefixes)):
            raise ValueError("give one non-empty layer-name prefix per block, top-down, or null for the default")
        if prefixes is not None and len(set(prefixes)) != len(prefixes):
            raise ValueError("each prefix may name one block only")
        return prefixes

    @model_validator(mode="after")
    def _keys_fit_the_kind(self) -> BackboneParams:
        kind = backbone_kind(self.name)
        for key in sorted(self.model_fields_set & set(_APPLIES_TO)):
            if kind not in _APPLIES_TO[key]:
                kinds = _listed([words for applies in _APPLIES_TO[key] for words in _KIND_WORDS[applies][0]])
                raise ValueError(
                    f"backbone.{key} applies to {kinds} only, and backbone.name {self.name!r} is "
                    f"{_KIND_WORDS[kind][1]}{_HINTS.get((key, kind), '')}; remove backbone.{key}"
                )
        return self

    @model_validator(mode="after")
    def _keras_file_fits(self) -> BackboneParams:
        if backbone_kind(self.name) != "keras_file":
            return self
        archive = read_keras_archive(self.name)
        if archive.unsafe and self.safe_mode:
            raise ValueError(f"backbone.safe_mode is true, but {archive.unsafe_refusal()}")
        fixed = archive.fixed_size
        if fixed is not None and fixed[0] != fixed[1]:
            raise ValueError(
                f"backbone.name: {self.name} takes {fixed[0]}x{fixed[1]} images; the pipeline feeds squares"
            )
        if fixed is not None and fixed[0] != self.image_size:
            raise ValueError(
                f"backbone.image_size is {self.image_size}, but {self.name} takes {fixed[0]}x{fixed[1]} images only; "
                f"set backbone.image_size: {fixed[0]}"
            )
        try:
            archive_blocks(archive, cut_layer=self.cut_layer, block_prefixes=self.block_prefixes)
        except KerasFileError as error:
            message = str(error)
            raise ValueError(message if message.startswith("backbone.") else f"backbone.name: {message}") from None
        return self

    def kind(self) -> BackboneKind:
        """Which kind of backbone `name` names (see `pipeline.backbones.names.backbone_kind`)."""
        return backbone_kind(self.name)

    def kind_options(self) -> dict[str, object]:
        """The options of this backbone's kind, as `pipeline.backbones.registry.load_backbone` takes them.

        Derived from the same table that refuses a key written for another kind, so the two cannot drift.
        `weights` is left out: `load_backbone` takes it for every kind.
        """
        kind = self.kind()
        return {key: getattr(self, key) for key, kinds in _APPLIES_TO.items() if key != "weights" and kind in kinds}

    def block_names(self) -> tuple[str, ...]:
        """The backbone's block names, top-down: what `train.unfreeze.*.blocks` counts."""
        kind = backbone_kind(self.name)
        if kind == "registered":
            return BACKBONE_BLOCKS[self.name]
        if kind == "hub":
            return (SAVED_MODEL_BLOCK,)
        blocks = archive_blocks(
            read_keras_archive(self.name), cut_layer=self.cut_layer, block_prefixes=self.block_prefixes
        )
        return tuple(block.name for block in blocks)
