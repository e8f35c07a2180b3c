"""The schema of params.yaml: one pydantic model per section, checks across sections, and one loader.

Why: a typo or an out-of-range value must stop a stage in seconds with a message naming the key,
the value received and what is allowed, before TensorFlow is even imported. This package imports
only pydantic, yaml and the pipeline's TF-free registries for that reason. Each section lives in its
own module (`data`, `backbone`, `head`, `optimizer`, `schedule`, `train`, `runtime`, `diagnostics`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, ValidationError, ValidationInfo, field_validator, model_validator

from pipeline.backbones.names import SAVED_MODEL_BLOCK
from pipeline.params.backbone import BackboneParams
from pipeline.params.common import Section
from pipeline.params.data import DataParams
from pipeline.params.diagnostics import DiagnosticsParams
from pipeline.params.errors import ParamsError, describe
from pipeline.params.head import HeadParams
from pipeline.params.naming import resolve_tracking_names
from pipeline.params.optimizer import OPTIMIZERS_WITH_MOMENTUM
from pipeline.params.runtime import DeviceParams, EvaluateParams, LRFindParams, TrackingParams
from pipeline.params.schedule import OneCycleParams, PiecewiseParams
from pipeline.params.seed_group import seed_group_key
from pipeline.params.train import TrainParams

__all__ = ["ParamsError", "PipelineParams", "flatten", "load", "parse", "seed_group_key"]


class PipelineParams(Section):
    """The whole params.yaml."""

    data: DataParams = Field(default_factory=DataParams)
    backbone: BackboneParams = Field(default_factory=BackboneParams)
    head: HeadParams = Field(default_factory=HeadParams)
    train: TrainParams = Field(default_factory=TrainParams)
    lr_find: LRFindParams = Field(default_factory=LRFindParams)
    evaluate: EvaluateParams = Field(default_factory=EvaluateParams)
    device: DeviceParams = Field(default_factory=DeviceParams)
    # Validated even when absent, so that its `auto` names are resolved below.
    tracking: TrackingParams = Field(default_factory=TrackingParams, validate_default=True)

    @field_validator("tracking")
    @classmethod
    def _resolve_auto_names(cls, tracking: TrackingParams, info: ValidationInfo) -> TrackingParams:
        """`auto` names become the data's and the backbone's, here once, so every stage reads the same ones.

        Why here: the data and backbone sections are validated before this one (fields run in order), and
        a name resolved at load time is what `config.tracking` says everywhere, logged params included.
        """
        data, backbone = info.data.get("data"), info.data.get("backbone")
        if data is None or backbone is None:  # their own errors are reported; no name to derive
            return tracking
        names = resolve_tracking_names(
            experiment=tracking.experiment,
            registered_model=tracking.registered_model,
            data_path=data.path,
            backbone=backbone.name,
        )
        return tracking.model_copy(update={"experiment": names.experiment, "registered_model": names.registered_model})

    diagnostics: DiagnosticsParams = Field(default_factory=DiagnosticsParams)

    @model_validator(mode="after")
    def _unfreeze_within_backbone(self) -> PipelineParams:
        blocks = self.backbone.block_names()
        for index, stage in enumerate(self.train.unfreeze):
            # `auto` is what the data asks for, within the backbone's blocks (a SavedModel has one).
            if stage.blocks not in ("all", "auto") and stage.blocks > len(blocks):
                if self.backbone.kind() == "hub":
                    raise ValueError(
                        f"train.unfreeze.{index}.blocks is {stage.blocks}, but {self.backbone.name} is a SavedModel: "
                        "TensorFlow Hub and SavedModel backbones are one opaque block "
                        f"({SAVED_MODEL_BLOCK}), so at most 1 block (or all) can be unfrozen"
                    )
                # A .keras file may have a block per layer: name the top ones, count the rest.
                listed = ", ".join(blocks[:12]) + (f", ... ({len(blocks) - 12} more)" if len(blocks) > 12 else "")
                raise ValueError(
                    f"train.unfreeze.{index}.blocks is {stage.blocks}, but {self.backbone.name} has "
                    f"{len(blocks)} blocks (top-down: {listed}); use all to unfreeze every block"
                )
        return self

    @model_validator(mode="after")
    def _saved_model_bn_policy_can_be_honoured(self) -> PipelineParams:
        """A SavedModel's BatchNorm layers are not reachable one by one: only two behaviours exist.

        Unfrozen and called through its inference endpoint, a SavedModel trains gamma and beta with the
        rest of its weights while normalising with fixed moving statistics (bn_policy affine). Through a
        training endpoint it normalises with batch statistics and updates them (trainable). `frozen`, BN
        weights kept apart from the weights around them, cannot be done to an opaque graph.
        """
        if self.backbone.kind() != "hub":
            return self
        for index, stage in enumerate(self.train.unfreeze):
            policy = stage.bn_policy or self.train.bn_policy
            where = f"train.unfreeze.{index}.bn_policy" if stage.bn_policy else "train.bn_policy"
            if policy == "frozen":
                raise ValueError(
                    f"{where} is frozen, which a SavedModel backbone cannot honour when train.unfreeze.{index} "
                    "unfreezes it: its BatchNorm gamma and beta are weights of its one opaque block and train "
                    "with it; use affine (moving statistics fixed) or, with backbone.training_signature, trainable"
                )
            if policy == "trainable" and self.backbone.training_signature is None:
                raise ValueError(
                    f"{where} is trainable, but backbone.training_signature is not set: through its inference "
                    "signature a SavedModel always normalises with its fixed moving statistics (what affine does); "
                    "set bn_policy: affine, or name the SavedModel's training endpoint in "
                    "backbone.training_signature"
                )
        return self

    @model_validator(mode="after")
    def _gate_baselines_are_scored(self) -> PipelineParams:
        # The gate can only compare with a baseline the evaluate stage scored.
        off = [name for name in self.tracking.gate_baselines if name in self.evaluate.baselines.disabled()]
        if off:
            keys = " and ".join(f"evaluate.baselines.{name}.enabled" for name in off)
            verb, pronoun = ("is", "it") if len(off) == 1 else ("are", "them")
            raise ValueError(
                f"tracking.gate_baselines lists {', '.join(off)}, but {keys} {verb} false, so evaluate does not "
                f"score {pronoun}; enable {pronoun} or remove {pronoun} from tracking.gate_baselines"
            )
        return self

    @model_validator(mode="after")
    def _auto_learning_rate_needs_the_range_test(self) -> PipelineParams:
        if self.train.base_learning_rate == "auto" and not self.lr_find.enabled:
            raise ValueError(
                "train.base_learning_rate is auto, which takes the LR range test's suggestion, but "
                "lr_find.enabled is false; enable the lr_find stage or give a number"
            )
        return self

    def _phase_settings(self) -> list[tuple[str, int | str, Any, Any]]:
        """(where it is set, epochs, optimiser, schedule) of every phase, stages inheriting the section's."""
        phases = [("train", self.train.frozen_epochs, self.train.optimizer, self.train.schedule)]
        phases += [
            (
                f"train.unfreeze.{index}",
                stage.epochs,
                stage.optimizer or self.train.optimizer,
                stage.schedule or self.train.schedule,
            )
            for index, stage in enumerate(self.train.unfreeze)
        ]
        return phases

    @model_validator(mode="after")
    def _schedules_fit_their_phases(self) -> PipelineParams:
        for where, epochs, _, schedule in self._phase_settings():
            # An `epochs: auto` phase's length is known once the data is: boundaries past its end are not reached.
            if epochs == "auto":
                continue
            if isinstance(schedule, PiecewiseParams) and schedule.boundaries[-1] >= epochs:
                raise ValueError(
                    f"{where}: piecewise boundaries {schedule.boundaries} reach the end of the phase "
                    f"({epochs} epochs); every boundary must be below {epochs}"
                )
        return self

    @model_validator(mode="after")
    def _cycled_momentum_needs_a_momentum_term(self) -> PipelineParams:
        for where, _, optimizer, schedule in self._phase_settings():
            if isinstance(schedule, OneCycleParams) and schedule.cycle_momentum and optimizer.momentum_term is None:
                raise ValueError(
                    f"{where}: the onecycle schedule cycles momentum, but optimizer {optimizer.name} has no "
                    "momentum term; set cycle_momentum: false or choose an optimizer with momentum "
                    f"({', '.join(OPTIMIZERS_WITH_MOMENTUM)})"
                )
        return self


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
        lines = [describe(PipelineParams, detail) for detail in error.errors()]
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
