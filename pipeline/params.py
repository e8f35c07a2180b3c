"""The schema of params.yaml: every section as a pydantic model, and one loader.

Why: a typo or an out-of-range value must stop a stage in seconds with a message naming the key,
the value received and what is allowed, before TensorFlow is even imported. This module imports
only pydantic and yaml for that reason.
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from pipeline.backbones.names import BACKBONE_BLOCKS, BACKBONE_NAMES
from pipeline.optimizers import OPTIMIZER_NAMES

PositiveInt = Annotated[int, Field(gt=0)]
Fraction = Annotated[float, Field(gt=0.0, lt=1.0)]


def Registered(names: tuple[str, ...], kind: str) -> Any:  # noqa: N802 (reads as a type)
    """A string that must be one of a registry's names; the error lists them."""

    def check(name: str) -> str:
        if name not in names:
            raise ValueError(f"unknown {kind}; registered {kind}s: {', '.join(names)}")
        return name

    return Annotated[str, AfterValidator(check)]


class ParamsError(ValueError):
    """Raised when params.yaml cannot be read or does not match the schema."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataParams(_Section):
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


class BackboneParams(_Section):
    """Which pretrained network to start from, and the input size it sees."""

    name: Registered(BACKBONE_NAMES, "backbone") = "efficientnet_lite0"
    image_size: Annotated[int, Field(ge=32, le=1024)] = 96
    cache_dir: str = ".cache/backbones"


class HeadParams(_Section):
    """The new classification head that replaces the ImageNet one."""

    pooling: Literal["avg", "max"] = "avg"
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.2


class UnfreezeStageParams(_Section):
    """One step of progressive unfreezing: the top `blocks` named blocks train at `lr_factor` x base LR."""

    blocks: PositiveInt
    epochs: PositiveInt
    lr_factor: Annotated[float, Field(gt=0.0, le=1.0)]


class TrainParams(_Section):
    """The fine-tuning recipe: frozen phase, then the unfreezing stages in order."""

    seed: int = 42
    batch_size: PositiveInt = 64
    optimizer: Registered(OPTIMIZER_NAMES, "optimizer") = "adam"
    base_learning_rate: Annotated[float, Field(gt=0.0, le=10.0)] = 1e-3
    frozen_epochs: PositiveInt = 5
    unfreeze: list[UnfreezeStageParams] = Field(default_factory=list)
    feature_cache_mb: Annotated[int, Field(ge=0)] = 2048


class EvaluateParams(_Section):
    """How the test split is scored."""

    batch_size: PositiveInt = 128


class DeviceParams(_Section):
    """Where TensorFlow runs, chosen before its first op."""

    type: Literal["auto", "cpu", "gpu"] = "auto"
    gpu_indices: list[Annotated[int, Field(ge=0)]] | None = None
    precision: Literal["auto", "float32", "mixed_float16"] = "auto"


class TrackingParams(_Section):
    """Where MLflow keeps runs and models; MLFLOW_TRACKING_URI in the environment overrides `uri`."""

    uri: str = "sqlite:///mlflow.db"
    artifact_dir: str = "mlartifacts"
    experiment: Annotated[str, Field(min_length=1)] = "transfer-learning"
    registered_model: Annotated[str, Field(min_length=1)] = "transfer-classifier"
    champion_metric: Literal["accuracy", "macro_f1"] = "accuracy"


class PipelineParams(_Section):
    """The whole params.yaml."""

    data: DataParams = Field(default_factory=DataParams)
    backbone: BackboneParams = Field(default_factory=BackboneParams)
    head: HeadParams = Field(default_factory=HeadParams)
    train: TrainParams = Field(default_factory=TrainParams)
    evaluate: EvaluateParams = Field(default_factory=EvaluateParams)
    device: DeviceParams = Field(default_factory=DeviceParams)
    tracking: TrackingParams = Field(default_factory=TrackingParams)

    @model_validator(mode="after")
    def _unfreeze_within_backbone(self) -> PipelineParams:
        blocks = BACKBONE_BLOCKS[self.backbone.name]
        for index, stage in enumerate(self.train.unfreeze):
            if stage.blocks > len(blocks):
                raise ValueError(
                    f"train.unfreeze.{index}.blocks is {stage.blocks}, but {self.backbone.name} has "
                    f"{len(blocks)} blocks (top-down: {', '.join(blocks)})"
                )
        return self


def _section_model(annotation: Any) -> type[BaseModel] | None:
    """Finds the pydantic model inside an annotation such as `list[UnfreezeStageParams] | None`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for argument in typing.get_args(annotation):
        found = _section_model(argument)
        if found is not None:
            return found
    return None


def _allowed_keys(location: tuple[int | str, ...]) -> list[str]:
    """Lists the keys the schema accepts in the mapping at `location`."""
    model: type[BaseModel] | None = PipelineParams
    for part in location:
        if model is None:
            return []
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        model = _section_model(field.annotation) if field is not None else None
    return sorted(model.model_fields) if model is not None else []


def _describe(error: Any) -> str:
    key = ".".join(str(part) for part in error["loc"])
    if error["type"] == "extra_forbidden":
        allowed = ", ".join(_allowed_keys(tuple(error["loc"][:-1])))
        return f"{key}: unknown key (received {error['input']!r}); allowed keys here: {allowed}"
    message = error["msg"].removeprefix("Value error, ")
    if not key:
        # A check across sections (its message names the keys itself): the input is the whole file.
        return message
    return f"{key}: received {error['input']!r}; {message}"


def parse(raw: Any, *, source: str = "params.yaml") -> PipelineParams:
    """Validates already-parsed YAML content.

    Args:
        raw: The mapping read from the file.
        source: Name used in error messages.

    Returns:
        The validated parameters.

    Raises:
        ParamsError: One line per problem, each naming key, value received and what is allowed.
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: expected a mapping of sections, received {type(raw).__name__}")
    try:
        return PipelineParams.model_validate(raw)
    except ValidationError as error:
        lines = [_describe(detail) for detail in error.errors()]
        raise ParamsError(f"{source} is invalid:\n  " + "\n  ".join(lines)) from None


def load(path: str | Path = "params.yaml") -> PipelineParams:
    """Reads and validates a params file.

    Args:
        path: The YAML file.

    Returns:
        The validated parameters.

    Raises:
        ParamsError: The file is missing, is not YAML, or does not match the schema.
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ParamsError(f"{path} not found") from None
    except yaml.YAMLError as error:
        raise ParamsError(f"{path} is not valid YAML: {error}") from None
    return parse(raw, source=str(path))


def flatten(params: BaseModel) -> dict[str, str]:
    """Flattens parameters to dotted keys for tracking (`train.unfreeze.0.blocks` -> "2")."""
    flat: dict[str, str] = {}

    def visit(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                visit(f"{prefix}.{key}" if prefix else str(key), item)
        elif isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
            for index, item in enumerate(value):
                visit(f"{prefix}.{index}", item)
        else:
            flat[prefix] = "null" if value is None else str(value)

    visit("", params.model_dump())
    return flat
