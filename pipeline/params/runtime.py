"""The sections around training: `lr_find`, `evaluate`, `device` and `tracking`."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, StrictBool, field_validator, model_validator

from pipeline.optim.lr_suggestions import SUGGESTION_RULES
from pipeline.params.baselines import BASELINE_NAMES, BaselinesParams
from pipeline.params.common import NumberOr, PositiveInt, Registered, Section
from pipeline.params.naming import AUTO, MAX_EXPERIMENT_LENGTH, MAX_REGISTERED_MODEL_LENGTH, MODEL_NAME_FORBIDDEN


class LRFindParams(Section):
    """The LR range test (stage `lr_find`): a short run with the LR growing exponentially, on the frozen phase."""

    enabled: bool = False
    min_lr: Annotated[float, Field(gt=0.0)] = 1e-6
    max_lr: Annotated[float, Field(gt=0.0, le=100.0)] = 1.0
    steps: Annotated[int, Field(ge=10, le=10_000)] = 200
    smoothing: Annotated[float, Field(ge=0.0, lt=1.0)] = Field(
        default=0.9,
        description="beta of the loss's moving average; larger is smoother but lags the LR by ~1/(1-beta) steps.",
    )
    images: Annotated[int, Field(ge=64)] = Field(default=4096, description="Training images the sweep draws from.")
    rule: Registered(SUGGESTION_RULES, "suggestion rule") = "valley"

    @model_validator(mode="after")
    def _range(self) -> LRFindParams:
        if self.max_lr <= self.min_lr:
            raise ValueError(f"max_lr ({self.max_lr}) must exceed min_lr ({self.min_lr})")
        return self


class EvaluateParams(Section):
    """How the test split is scored, and the classical baselines scored beside the model."""

    batch_size: PositiveInt = 128
    baselines: BaselinesParams = Field(default_factory=BaselinesParams)


class DeviceParams(Section):
    """Where TensorFlow runs and how, chosen once before its first op."""

    accelerator: Literal["auto", "cpu", "gpu"] = Field(
        default="auto", description="auto: the GPUs when there are any, else the CPU; gpu: fail without one."
    )
    gpus: Literal["all"] | list[int] = Field(
        default="all", description="all, or the indices of the GPUs to use (several: MirroredStrategy over them)."
    )
    memory_growth: StrictBool = Field(
        default=True, description="Allocate GPU memory as needed, not all of it at start."
    )
    precision: Literal["auto", "float32", "mixed_float16", "mixed_bfloat16"] = Field(
        default="auto", description="auto: mixed_float16 on GPUs of compute capability >= 7.0, else float32."
    )
    jit_compile: NumberOr("auto", StrictBool) = Field(
        default="auto", description="XLA compilation of the training step: auto (Keras decides), true or false."
    )

    @model_validator(mode="before")
    @classmethod
    def _renamed_keys(cls, data: Any) -> Any:
        renamed = {"type": "accelerator", "gpu_indices": "gpus"}
        if isinstance(data, dict):
            for old, new in renamed.items():
                if old in data:
                    raise ValueError(f"device.{old} ({data[old]!r}) is now device.{new}")
        return data

    @field_validator("gpus", mode="before")
    @classmethod
    def _all_or_gpu_indices(cls, gpus: Any) -> Any:
        # One message for both forms: pydantic would report each branch of the union on a line of its own.
        allowed = "allowed: all, or a list of GPU indices such as [0, 1]"
        if gpus == "all":
            return gpus
        indices = gpus if isinstance(gpus, list) else None
        if not indices or not all(
            isinstance(index, int) and not isinstance(index, bool) and index >= 0 for index in indices
        ):
            raise ValueError(allowed)
        if len(set(indices)) != len(indices):
            raise ValueError(f"lists a GPU twice; {allowed}, each once")
        return gpus

    @model_validator(mode="after")
    def _gpus_need_an_accelerator(self) -> DeviceParams:
        # GPUs named for a CPU run would be silently ignored: the two settings contradict each other.
        if self.accelerator == "cpu" and self.gpus != "all":
            raise ValueError(
                f"device.gpus {self.gpus} names GPUs, but device.accelerator is 'cpu'; "
                "allowed with cpu: gpus all (or use accelerator auto or gpu)"
            )
        return self


class TrackingParams(Section):
    """Where MLflow keeps runs and models; MLFLOW_TRACKING_URI in the environment overrides `uri`."""

    uri: str = Field(
        default="sqlite:///mlflow.db",
        description="sqlite:///, postgresql://, mysql://, mssql://, http(s):// (an MLflow server), databricks, or a "
        "folder with MLFLOW_ALLOW_FILE_STORE=true; validate refuses other schemes (pipeline.tracking.store).",
    )
    artifact_dir: str = "mlartifacts"
    experiment: Annotated[str, Field(min_length=1, max_length=MAX_EXPERIMENT_LENGTH)] = Field(
        default=AUTO,
        description="auto: <data>-transfer, after data.path (fashion-mnist-transfer for Fashion-MNIST); or a name.",
    )
    registered_model: Annotated[str, Field(min_length=1, max_length=MAX_REGISTERED_MODEL_LENGTH)] = Field(
        default=AUTO,
        description="auto: <data>-<backbone>, after data.path and backbone.name "
        "(fashion-mnist-efficientnet-lite0); or a name without / or :.",
    )
    champion_metric: Literal["accuracy", "macro_f1"] = "accuracy"
    champion_margin: Annotated[float, Field(ge=0.0, lt=1.0)] = Field(
        default=0.0,
        description=(
            "The new model becomes @champion when its champion_metric beats both the champion's score on the "
            "same test split and the best of gate_baselines by more than this (0: any strict improvement)."
        ),
    )
    champion_alpha: Annotated[float, Field(gt=0.0, lt=1.0)] | None = Field(
        default=0.05,
        description=(
            "The new model becomes @champion only when McNemar's exact test on the test images exactly one of "
            "the two models gets right gives a p-value below this, against the champion and the best of "
            "gate_baselines; null: no test (the margin alone decides)."
        ),
    )
    gate_baselines: list[str] = Field(
        default_factory=lambda: list(BASELINE_NAMES),
        description=(
            "The baselines whose best score on champion_metric is the gate's floor: a model that does not beat it "
            "by more than champion_margin is not @champion."
        ),
    )
    system_metrics_interval: Annotated[float, Field(ge=0.0, le=3600.0)] = Field(
        default=10.0,
        description="Seconds between CPU/memory/GPU samples on the run (system/* metrics); 0 turns them off.",
    )
    reconnect_seconds: Annotated[float, Field(ge=0.0, le=86400.0)] = Field(
        default=120.0,
        description="How long train waits, once training ended, for a tracking server that went away to "
        "answer again; then it stops in one line and keeps its checkpoint, and the next run logs the epochs.",
    )

    @field_validator("experiment", "registered_model")
    @classmethod
    def _no_outer_spaces(cls, name: str) -> str:
        # MLflow keeps the spaces, and `models:/ name@champion` then names nothing anyone would type.
        if name != name.strip():
            raise ValueError("starts or ends with a space; remove it")
        return name

    @field_validator("registered_model")
    @classmethod
    def _model_name_mlflow_takes(cls, name: str) -> str:
        if any(character in name for character in MODEL_NAME_FORBIDDEN):
            raise ValueError(
                "holds / or :, which MLflow refuses in a registered model's name (they separate the parts of "
                "models:/<name>@<alias>); use - instead, or auto"
            )
        return name

    @field_validator("gate_baselines")
    @classmethod
    def _known_baselines(cls, names: list[str]) -> list[str]:
        allowed = f"allowed: one or more of {', '.join(BASELINE_NAMES)}"
        unknown = [name for name in names if name not in BASELINE_NAMES]
        if unknown:
            raise ValueError(f"unknown baseline {', '.join(map(repr, unknown))}; {allowed}")
        if not names:
            raise ValueError(allowed)
        if len(set(names)) != len(names):
            raise ValueError(f"lists a baseline twice; {allowed}, each once")
        return names
