"""The model registry: the version `@champion` points at, and registering a version with the gate's verdict.

Why only "no such model" or "no such alias" means "no champion": any other error (a server down) is
raised, so that it is never mistaken for an empty registry, which a model would enter unopposed. The
verdict itself is the champion gate's (`pipeline.evaluation.gate`); here it is only recorded.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import mlflow

from pipeline.tracking.runs import TrackedRun

CHAMPION_ALIAS = "champion"


def champion_version(run: TrackedRun, name: str) -> str | None:
    """The version `@champion` of the registered model `name` points at.

    Args:
        run: An open run (its client reaches the registry).
        name: Registered model name.

    Returns:
        The version, or None when the registered model or its `champion` alias does not exist.

    Raises:
        MlflowException: Any other registry error (e.g. the server cannot be reached).
    """
    try:
        registered = run.client.get_registered_model(name)
    except mlflow.exceptions.MlflowException as error:
        if error.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    version = registered.aliases.get(CHAMPION_ALIAS)
    return None if version is None else str(version)


@dataclass(frozen=True)
class Registration:
    """Outcome of registering a model version: the version, and whether it is champion now."""

    name: str
    version: str
    is_champion: bool
    champion_version: str | None


def register_model(
    run: TrackedRun,
    *,
    model_uri: str,
    name: str,
    promote: bool,
    version_tags: Mapping[str, str],
    run_tags: Mapping[str, str],
) -> Registration:
    """Adds a version to the registered model, tags it and the run, and moves `@champion` when `promote`.

    Why the decision is made elsewhere (`pipeline.evaluation.gate.decide`): it rests on the champion
    scored on the challenger's own test split, which the evaluate stage measured; here it is only
    recorded, on the version and on the run.

    Args:
        run: The run that logged the model.
        model_uri: The logged model's URI.
        name: Registered model name.
        promote: Whether `@champion` moves to the new version.
        version_tags: Tags of the new version (the gate's numbers and reason); `run_id` is added.
        run_tags: Tags of the run (the gate's decision in short).

    Returns:
        The new version, whether it is champion, and the champion's version after this (None when the
        registry has none).
    """
    version = str(mlflow.register_model(model_uri, name).version)
    for key, value in {"run_id": run.run_id, **version_tags}.items():
        run.client.set_model_version_tag(name, version, key, value)
    run.set_tags(dict(run_tags))
    if promote:
        run.client.set_registered_model_alias(name, CHAMPION_ALIAS, version)
    return Registration(
        name=name,
        version=version,
        is_champion=promote,
        champion_version=version if promote else champion_version(run, name),
    )
