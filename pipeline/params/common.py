"""Building blocks shared by the sections of the params schema.

Why: every section forbids unknown keys, is immutable once validated, and reports a name that is not
registered by listing the registered ones; and three kinds of setting (activation, optimiser, schedule)
take either a bare name or a mapping of the name and its own options. Those rules live here once.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, PlainValidator, TypeAdapter
from pydantic import ValidationError as PydanticValidationError

PositiveInt = Annotated[int, Field(gt=0)]
# Unbounded above, so infinity is refused by name: `.inf` for a duration or a bound means a typo, not a choice.
PositiveFloat = Annotated[float, Field(gt=0.0, allow_inf_nan=False)]
NonNegativeFloat = Annotated[float, Field(ge=0.0, allow_inf_nan=False)]
Fraction = Annotated[float, Field(gt=0.0, lt=1.0)]
Rate = Annotated[float, Field(ge=0.0, lt=1.0)]


class Section(BaseModel):
    """A mapping of params.yaml: unknown keys are errors, and the validated value is frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class NamedOptions(Section):
    """A choice from a registry together with the options of that choice (`{name: sgd, momentum: 0.9}`).

    Subclasses declare `name` as a one-value Literal and their own options as fields.
    """

    def options(self) -> dict[str, Any]:
        """The options, without the name, as keyword arguments for the pipeline's factories."""
        return self.model_dump(exclude={"name"})


def Registered(names: tuple[str, ...], kind: str) -> Any:  # noqa: N802 (reads as a type)
    """A string that must be one of a registry's names; the error lists them."""

    def check(name: str) -> str:
        if name not in names:
            raise ValueError(f"unknown {kind}; registered {kind}s: {', '.join(names)}")
        return name

    return Annotated[str, AfterValidator(check)]


def NumberOr(word: str | tuple[str, ...], number: Any) -> Any:  # noqa: N802 (reads as a type)
    """A number of type `number` (with its bounds) or the word `word` (or one of several), with one message
    when neither.

    Why: pydantic reports each branch of `float | Literal["auto"]` on a line of its own, under keys
    such as `...constrained-float`; a user needs one line under the key they wrote.
    """
    adapter = TypeAdapter(number)
    words = (word,) if isinstance(word, str) else word
    spelled = " or ".join(words)

    def check(value: Any) -> Any:
        if isinstance(value, str) and value in words:
            return value
        try:
            return adapter.validate_python(value)
        except PydanticValidationError as error:
            # A mapping's error names its key inside (e.g. `patience`), which the one line would lose.
            first = error.errors()[0]
            inside = ".".join(str(part) for part in first["loc"])
            if first["type"] == "extra_forbidden" and isinstance(number, type) and issubclass(number, BaseModel):
                allowed = ", ".join(sorted(number.model_fields))
                raise ValueError(f"{inside}: unknown key; allowed keys here: {allowed}, or {spelled}") from None
            raise ValueError(f"{inside + ': ' if inside else ''}{first['msg']}, or {spelled}") from None

    return Annotated[number | Literal[words], PlainValidator(check)]


def NamedChoice(members: tuple[type[NamedOptions], ...], kind: str) -> Any:  # noqa: N802 (reads as a type)
    """A bare registered name or a mapping `{name: ..., <its options>}`, validated by the member named.

    Why a check before pydantic's own: an unknown name should list the registered names, as every other
    registry error does, rather than pydantic's generic "does not match any of the expected tags".

    Args:
        members: One model per registered name (each with a Literal `name` field).
        kind: What is chosen ("optimizer"), for messages.

    Returns:
        An annotation usable as a field type.
    """
    names = tuple(member.model_fields["name"].annotation.__args__[0] for member in members)

    def expand(value: Any) -> Any:
        if isinstance(value, str):
            value = {"name": value}
        if isinstance(value, dict):
            name = value.get("name")
            if name is None:
                raise ValueError(f"a {kind} mapping needs a 'name' key; registered {kind}s: {', '.join(names)}")
            if name not in names:
                raise ValueError(f"unknown {kind} {name!r}; registered {kind}s: {', '.join(names)}")
        return value

    union = members[0]
    for member in members[1:]:
        union = union | member
    return Annotated[union, Field(discriminator="name"), BeforeValidator(expand)]
