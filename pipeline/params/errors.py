"""Turning pydantic's validation errors into one line per problem: key, value received, what is allowed.

Why: pydantic reports locations such as `('train', 'optimizer', 'sgd', 'beta_1')`, where `sgd` is the
tag that chose a member of a union, and messages such as "Extra inputs are not permitted". A user of
params.yaml needs `train.optimizer.beta_1: unknown key (received 0.9); allowed keys here: ...`.
"""

from __future__ import annotations

import typing
from typing import Any

from pydantic import BaseModel

from pipeline.errors import PipelineError


class ParamsError(PipelineError, ValueError):
    """Raised when params.yaml cannot be read or does not match the schema."""


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models inside an annotation such as `list[Stage] | None` or a union of options."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for argument in typing.get_args(annotation):
        found.extend(_models_in(argument))
    return found


def _tag(model: type[BaseModel]) -> str | None:
    """The value of a union member's one-value `name` Literal, if it has one."""
    field = model.model_fields.get("name")
    arguments = typing.get_args(field.annotation) if field is not None else ()
    return arguments[0] if len(arguments) == 1 and isinstance(arguments[0], str) else None


def _walk(root: type[BaseModel], location: tuple[int | str, ...]) -> tuple[str, type[BaseModel] | None]:
    """Follows `location` through the schema.

    Returns:
        The dotted key a user writes (union tags and nothing else dropped) and the model of the mapping
        found there, or None when the location leaves the schema's mappings.
    """
    parts: list[str] = []
    model: type[BaseModel] | None = root
    candidates: list[type[BaseModel]] = []
    for part in location:
        if isinstance(part, int):
            parts.append(str(part))
            continue
        tagged = {_tag(candidate): candidate for candidate in candidates}
        if len(candidates) > 1 and part in tagged:
            model = tagged[part]
            candidates = []
            continue
        parts.append(str(part))
        field = model.model_fields.get(str(part)) if model is not None else None
        candidates = _models_in(field.annotation) if field is not None else []
        model = candidates[0] if len(candidates) == 1 else None
    return ".".join(parts), model


def describe(root: type[BaseModel], error: Any) -> str:
    """One line for one pydantic error detail."""
    location = tuple(error["loc"])
    key, _ = _walk(root, location)
    if error["type"] == "extra_forbidden":
        _, model = _walk(root, location[:-1])
        allowed = ", ".join(sorted(model.model_fields)) if model is not None else ""
        return f"{key}: unknown key (received {error['input']!r}); allowed keys here: {allowed}"
    message = error["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if not key or message.startswith(f"{key}."):
        # A check across sections, or across a section's keys, whose message names the keys itself: the input
        # is the whole file or section, too long to repeat.
        return message
    return f"{key}: received {error['input']!r}; {message}"
