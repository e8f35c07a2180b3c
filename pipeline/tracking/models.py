"""Logged models: logging a Keras model with its signature and card, and loading one back.

Why: `log_model(..., input_example=...)` fails on Keras 3 (upstream #16183), so the signature is built
from shapes instead, and pip requirements are given, since inferring them costs seconds. The model's
class names travel in its metadata, so the gate can tell whether a champion answers the same question.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import mlflow
import numpy as np
from mlflow.models import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types import Schema, TensorSpec

from pipeline.tracking.runs import TrackedRun, TrackingLookupError, fluent_run

if TYPE_CHECKING:
    import keras

# Key of the class names in a logged model's metadata (MLmodel's `metadata`).
CLASS_NAMES_KEY = "class_names"


def log_keras_model(
    run: TrackedRun,
    model: keras.Model,
    *,
    name: str,
    pip_requirements: list[str],
    class_names: Sequence[str],
    metadata: dict[str, Any] | None = None,
) -> str:
    """Logs a Keras model with a tensor signature built from its shapes and its class names as metadata.

    The logged model loads through `mlflow.pyfunc` (its `predict` takes a float32 array of 0..255
    pixels and returns class probabilities) and serves with `mlflow models serve`.

    Args:
        run: The open run that logs it.
        model: Model with one image input and one probability output.
        name: Artifact name of the model in the run.
        pip_requirements: What the model needs to load.
        class_names: Label index -> class name, one per output.
        metadata: More JSON-friendly facts for the model's MLmodel file (the model card: class names,
            stored image shape), read back by `load_logged_model`.

    Returns:
        The model URI (`runs:/<id>/<name>`).

    Raises:
        ValueError: The number of class names is not the model's number of outputs.
    """
    if len(class_names) != model.output_shape[-1]:
        raise ValueError(f"{len(class_names)} class names for a model with {model.output_shape[-1]} outputs")
    # The input is left unnamed: with a name, pyfunc hands Keras a dict, and Keras warns on every predict that
    # the structure of its inputs does not match its single input (the output's name only labels the result).
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype("float32"), (-1, *model.input_shape[1:]))]),
        outputs=Schema([TensorSpec(np.dtype("float32"), (-1, *model.output_shape[1:]), "probabilities")]),
    )
    with fluent_run(run.run_id):
        info = mlflow.tensorflow.log_model(
            model,
            name=name,
            signature=signature,
            pip_requirements=pip_requirements,
            metadata={CLASS_NAMES_KEY: list(class_names), **(metadata or {})},
        )
    return info.model_uri


def load_model_version(run: TrackedRun, name: str, version: str) -> tuple[keras.Model, tuple[str, ...] | None]:
    """Loads a registered model version as Keras, with the class names it was logged with.

    Args:
        run: An open run (it set the tracking URI the registry lives under).
        name: Registered model name.
        version: Version number.

    Returns:
        The model and its class names, or None for the names when it was logged without them.
    """
    uri = f"models:/{name}/{version}"
    class_names = (mlflow.models.get_model_info(uri).metadata or {}).get(CLASS_NAMES_KEY)
    model = load_keras_model(uri)
    return model, None if class_names is None else tuple(str(item) for item in class_names)


# Keras' refusal of a TFSMLayer in safe mode; a Lambda layer's refusal reads differently and stays refused.
_SAVED_MODEL_LAYER_REFUSAL = "Requested the deserialization of a `TFSMLayer`"


def load_keras_model(uri: str) -> keras.Model:
    """Loads a logged Keras model, lifting Keras' safe mode only for a model on a TF Hub or SavedModel backbone.

    Why: such a model holds a `TFSMLayer` (the SavedModel's path, see `pipeline.model.export`), which Keras
    refuses in safe mode although it runs no Python code from the file; a Lambda layer, which would run
    code, is still refused.

    Args:
        uri: `models:/...`, `runs:/...` or any model URI MLflow resolves.

    Returns:
        The uncompiled Keras model.
    """
    try:
        return mlflow.tensorflow.load_model(uri, keras_model_kwargs={"compile": False})
    except ValueError as error:
        if _SAVED_MODEL_LAYER_REFUSAL not in str(error):
            raise
    return mlflow.tensorflow.load_model(uri, keras_model_kwargs={"compile": False, "safe_mode": False})


@dataclass(frozen=True)
class LoggedModel:
    """A model loaded from the tracking store, with what MLflow knows about it.

    Attributes:
        model: The Keras model.
        uri: The URI it was loaded from.
        run_id: The run that logged it.
        version: The registered version, for a `models:/` URI.
        metadata: The metadata logged with it ({} when none).
    """

    model: keras.Model
    uri: str
    run_id: str | None
    version: str | None
    metadata: dict[str, Any]


def load_logged_model(uri: str, *, tracking_uri: str) -> LoggedModel:
    """Loads a Keras model logged in MLflow: `models:/NAME@ALIAS`, `models:/NAME/VERSION` or `runs:/ID/PATH`.

    Args:
        uri: The model URI.
        tracking_uri: The tracking store (and registry) to resolve it in.

    Returns:
        The model with its run, registered version and metadata.

    Raises:
        TrackingLookupError: The model, alias, version or run does not exist.
    """
    mlflow.set_tracking_uri(tracking_uri)
    try:
        info = mlflow.models.get_model_info(uri)
        version = _registered_version(MlflowClient(tracking_uri), uri)
        model = load_keras_model(uri)
    except (mlflow.exceptions.MlflowException, OSError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise TrackingLookupError(f"cannot load {uri} from {tracking_uri}: {reason}") from None
    return LoggedModel(model=model, uri=uri, run_id=info.run_id, version=version, metadata=dict(info.metadata or {}))


def _registered_version(client: MlflowClient, uri: str) -> str | None:
    if not uri.startswith("models:/"):
        return None
    reference = uri.removeprefix("models:/").rstrip("/")
    if "@" in reference:
        name, alias = reference.rsplit("@", 1)
        return str(client.get_model_version_by_alias(name, alias).version)
    name, _, version = reference.rpartition("/")
    return version if name and version.isdigit() else None
