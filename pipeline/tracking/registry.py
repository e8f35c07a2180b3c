"""The model registry: the version `@champion` points at, and registering a version with the gate's verdict.

Why only "no such model" or "no such alias" means "no champion": any other error (a server down) is
raised, so that it is never mistaken for an empty registry, which a model would enter unopposed. The
verdict itself is the champion gate's (`pipeline.evaluation.gate`); here it is only recorded.
"""

from __future__ import annotations

import contextlib
import io
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import mlflow

from pipeline.errors import PipelineError
from pipeline.tracking.runs import TrackedRun

CHAMPION_ALIAS = "champion"
# Set on a version once its gate decision is recorded and the alias moved (or not): the next one may decide.
SETTLED_TAG = "gate.settled"
# The champion a registration found at its turn ("none"): where `withdraw` puts the alias back.
PREVIOUS_CHAMPION_TAG = "gate.previous_champion"
# Set once the registration's files are in place too (`mark_complete`): a version of this run without it is
# a leftover of a killed or failed attempt, which the run's next registration withdraws.
COMPLETE_TAG = "pipeline.registration"
TURN_TIMEOUT_SECONDS = 300.0


class RegistrationRaceError(PipelineError, RuntimeError):
    """Another pipeline's registration to the same name did not settle in time; nothing was registered."""


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


class Verdict(Protocol):
    """What a registration records: the gate's decision (`pipeline.evaluation.gate.GateDecision` is one)."""

    promote: bool

    def version_tags(self) -> dict[str, str]: ...

    def run_tags(self) -> dict[str, str]: ...


V = TypeVar("V", bound=Verdict)


@dataclass(frozen=True)
class _FixedVerdict:
    promote: bool
    tags_of_version: Mapping[str, str]
    tags_of_run: Mapping[str, str]

    def version_tags(self) -> dict[str, str]:
        return dict(self.tags_of_version)

    def run_tags(self) -> dict[str, str]:
        return dict(self.tags_of_run)


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
    recorded, on the version and on the run. A decision that must hold against another pipeline
    registering at the same time goes through `register_gated`.

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
    verdict = _FixedVerdict(promote, version_tags, run_tags)
    registration, _ = register_gated(run, model_uri=model_uri, name=name, decide=lambda _: verdict)
    mark_complete(run, name, registration.version)
    return registration


def mark_complete(run: TrackedRun, name: str, version: str) -> None:
    """Records that a registration is complete, files included (tag `pipeline.registration: complete`)."""
    run.client.set_model_version_tag(name, version, COMPLETE_TAG, "complete")


def register_gated(
    run: TrackedRun,
    *,
    model_uri: str,
    name: str,
    decide: Callable[[str | None], V],
    turn_timeout: float = TURN_TIMEOUT_SECONDS,
    poll_seconds: float = 0.2,
) -> tuple[Registration, V]:
    """Adds a version, waits for the registrations before it, then decides against the champion of that moment.

    Why: the gate reads the champion, decides, then moves the alias; two pipelines registering to one
    name at once would both decide against the same old champion, and the last alias move would win,
    better or not. MLflow has no conditional alias move, so the registrations take turns in the order
    of their version numbers, which the store hands out one by one: a version decides only once every
    lower version of a running run is settled (tag `gate.settled`), so it reads the alias its
    predecessors left, and `decide` sees that champion. Versions of finished, failed or killed runs
    never hold a turn; a run killed mid-registration (still RUNNING) holds it for `turn_timeout` at most.

    Leftovers of this same run (a register stage killed or failed before `mark_complete`) are withdrawn
    first, so a rerun never doubles a version (`withdraw`). The caller marks the registration complete
    once its files are in place.

    Args:
        run: The run that logged the model.
        model_uri: The logged model's URI.
        name: Registered model name.
        decide: The champion version at this version's turn (None: none) -> the verdict to record.
        turn_timeout: Seconds to wait for an earlier registration before refusing.
        poll_seconds: Seconds between two reads of the registry while waiting.

    Returns:
        The registration, and the verdict it was registered with.

    Raises:
        RegistrationRaceError: An earlier registration did not settle within `turn_timeout`; the new
            version is withdrawn.
    """
    for leftover in _leftover_versions(run, name):
        withdraw(run, name, leftover)
    # MLflow prints "Successfully registered model ..." and "Created version ..." to stderr; the register stage
    # prints its own line with the version and the gate's decision.
    with contextlib.redirect_stderr(io.StringIO()):
        version = str(mlflow.register_model(model_uri, name).version)
    try:
        run.client.set_model_version_tag(name, version, "run_id", run.run_id)
        _wait_for_turn(run, name, version, timeout=turn_timeout, poll_seconds=poll_seconds)
        current = champion_version(run, name)
        verdict = decide(current)
        for key, value in {**verdict.version_tags(), PREVIOUS_CHAMPION_TAG: current or "none"}.items():
            run.client.set_model_version_tag(name, version, key, value)
        run.set_tags(dict(verdict.run_tags()))
        if verdict.promote:
            run.client.set_registered_model_alias(name, CHAMPION_ALIAS, version)
        # Last: the next registration in line reads the alias only after this.
        run.client.set_model_version_tag(name, version, SETTLED_TAG, "true")
    except BaseException:
        with contextlib.suppress(Exception):
            withdraw(run, name, version)
        raise
    registration = Registration(
        name=name,
        version=version,
        is_champion=verdict.promote,
        champion_version=version if verdict.promote else champion_version(run, name),
    )
    return registration, verdict


def withdraw(run: TrackedRun, name: str, version: str) -> None:
    """Deletes a version whose registration did not complete, and gives `@champion` back if it had taken it.

    Why: a version whose exports failed, or whose stage was killed, must not stay in the registry as if it
    were a complete registration; the alias returns to the champion its registration had found
    (tag `gate.previous_champion`), or is removed when there was none.
    """
    tags = run.client.get_model_version(name, version).tags
    if champion_version(run, name) == version:
        previous = tags.get(PREVIOUS_CHAMPION_TAG, "none")
        if previous == "none":
            run.client.delete_registered_model_alias(name, CHAMPION_ALIAS)
        else:
            run.client.set_registered_model_alias(name, CHAMPION_ALIAS, previous)
    run.client.delete_model_version(name, version)


def _versions(run: TrackedRun, name: str) -> list[Any]:
    """Every version of the registered model `name`; none when the model does not exist yet."""
    try:
        return run.client.search_model_versions(f"name = '{name}'")
    except mlflow.exceptions.MlflowException as error:
        if error.error_code == "RESOURCE_DOES_NOT_EXIST":
            return []
        raise


def _leftover_versions(run: TrackedRun, name: str) -> list[str]:
    """Versions of this run whose registration never completed (a killed or failed attempt)."""
    versions = _versions(run, name)
    return sorted(
        (
            str(item.version)
            for item in versions
            if (item.run_id or item.tags.get("run_id")) == run.run_id and item.tags.get(COMPLETE_TAG) != "complete"
        ),
        key=int,
    )


def _unsettled_versions(run: TrackedRun, name: str, *, of_run: bool, below: int | None = None) -> list[str]:
    """Versions of `name` not settled yet: of this run (`of_run`), or of other runs still RUNNING, below `below`."""
    versions = _versions(run, name)
    found = []
    for item in versions:
        if item.tags.get(SETTLED_TAG) == "true" or (below is not None and int(item.version) >= below):
            continue
        owner = item.run_id or item.tags.get("run_id")
        if of_run:
            if owner == run.run_id:
                found.append(str(item.version))
        elif owner != run.run_id and (owner is None or run.client.get_run(owner).info.status == "RUNNING"):
            found.append(str(item.version))
    return sorted(found, key=int)


def _wait_for_turn(run: TrackedRun, name: str, version: str, *, timeout: float, poll_seconds: float) -> None:
    deadline = time.monotonic() + timeout
    while pending := _unsettled_versions(run, name, of_run=False, below=int(version)):
        if time.monotonic() > deadline:
            raise RegistrationRaceError(
                f"{name} v{pending[0]} has been registering for over {timeout:g} s (its run is still RUNNING), "
                f"so v{version} cannot be compared with the champion it leaves: v{version} is withdrawn; rerun "
                "`dvc repro` once that run ends (a killed run is closed as KILLED by its next stage)"
            )
        time.sleep(poll_seconds)
