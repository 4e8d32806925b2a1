"""Typed parameter schemas: the single source of defaults, validation and documentation.

Every stage, data source and model declares its parameters as a `Params` subclass. Unknown keys
and wrong types are errors (never silently ignored), and errors become one line that names the
dotted key, what was given and what is expected.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from types import UnionType
from typing import Annotated, Any, ClassVar, Generic, Literal, TypeVar, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, ValidationError

from pipeline.errors import PipelineError, quoted

P = TypeVar("P", bound="Params")


class Params(BaseModel):
    """Base of every typed config: strict types, no unknown keys, immutable once parsed."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Plugin(Generic[P]):
    """Base of every plugin (stage, data source, model): a `Config` schema, and the config parsed
    from it that the plugin was made with.

    The schema is declared once, as the generic parameter: `class Round(Stage[RoundParams])` sets
    `Round.Config = RoundParams` and types `self.config` as `RoundParams`. A class may still set
    `Config = X` itself (a plugin that subclasses without a parameter); with a parameter as well,
    X must be that parameter or a subclass of it.
    """

    Config: ClassVar[type[Params]] = Params

    def __init__(self, config: P):
        self.config: P = config

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        declared = config_parameter(cls)
        explicit = cls.__dict__.get("Config")
        if declared is None:
            return
        if explicit is None:
            cls.Config = declared
        elif not (isinstance(explicit, type) and issubclass(explicit, declared)):
            raise TypeError(
                f"{cls.__module__}.{cls.__qualname__}: Config = {getattr(explicit, '__name__', explicit)} is not "
                f"{declared.__name__} (its generic parameter) or a subclass of it; drop the Config line"
            )


def config_parameter(cls: type) -> type[Params] | None:
    """The Params class a plugin class names as its own generic parameter (`Stage[X]` -> X).

    A type variable counts as its bound (`Architecture(Plugin[A])` with A bound to ModelParams),
    so a generic base gets the common schema of its subclasses. None when the class names none.
    """
    for base in cls.__dict__.get("__orig_bases__", ()):
        origin = get_origin(base)
        if not (isinstance(origin, type) and issubclass(origin, Plugin)):
            continue
        for arg in get_args(base):
            candidate = arg.__bound__ if isinstance(arg, TypeVar) else arg
            if isinstance(candidate, type) and issubclass(candidate, Params):
                return candidate
    return None


def parse(schema: type[P], values: Mapping[str, Any] | None, where: str) -> P:
    """Validate `values` against `schema`; raise a one-line PipelineError naming `where.key`."""
    try:
        return schema.model_validate(dict(values or {}))
    except ValidationError as error:
        raise PipelineError(describe_error(error, schema, where)) from None


def describe_error(error: ValidationError, schema: type[Params], where: str) -> str:
    """Turn pydantic's error into `where.key: problem (got X); key: its description`.

    An unknown key is reported before anything else: a mistyped key also makes the intended
    one look missing, and the typo is the thing to fix.
    """
    errors = error.errors()
    first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    location = [str(part) for part in first["loc"]]
    key = ".".join(part for part in [where, *location] if part) or "config"
    field_name = location[0] if location else ""
    if first["type"] == "extra_forbidden":
        return f"{key}: unknown key{suggest(field_name, list(schema.model_fields))}"
    if first["type"] == "missing":
        return f"{key}: missing required key; {help_of(schema, field_name)}"
    message = first["msg"].replace("Input should be", "expected")
    if first["type"].startswith("value_error"):
        message = message.removeprefix("Value error, ")
    got = f" (got {quoted(first['input'])})" if "input" in first and field_name else ""
    described = help_of(schema, field_name)
    return f"{key}: {message}{got}" + (f"; {described}" if described else "")


def suggest(name: str, valid: list[str]) -> str:
    """`; did you mean 'x'? valid: a, b` for a mistyped name."""
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.5)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return f"{hint} (valid: {', '.join(sorted(valid))})"


def help_of(schema: type[Params], field_name: str) -> str:
    """`name: description [default: x]` for one field, or '' when it has none."""
    field = schema.model_fields.get(field_name)
    if field is None or not field.description:
        return ""
    return f"{field_name}: {field.description}"


def describe_schema(schema: type[Params]) -> list[tuple[str, str, str, str]]:
    """(name, type, default, description) rows for documentation and `--help` listings."""
    return [
        (
            name,
            type_name(field.annotation),
            "required" if field.is_required() else repr(field.get_default(call_default_factory=True)),
            field.description or "",
        )
        for name, field in schema.model_fields.items()
    ]


def type_name(annotation: Any) -> str:
    """`Literal['a', 'b']` -> 'a|b'; `Union[float, dict[str, float]]` -> 'float | dict[str, float]';
    other types by their short name."""
    origin = get_origin(annotation)
    if origin is Literal:
        return "|".join(str(choice) for choice in get_args(annotation))
    if origin is Union or origin is UnionType:  # Union[a, b] and a | b
        return " | ".join(type_name(arg) for arg in get_args(annotation))
    if origin is Annotated:  # a constrained type (e.g. Field(ge=0) on dict values): the constraints are in the description
        return type_name(get_args(annotation)[0])
    if origin is not None:  # dict[str, float], list[int]: each argument named the same way
        return f"{getattr(origin, '__name__', origin)}[{', '.join(type_name(arg) for arg in get_args(annotation))}]"
    if annotation is type(None):
        return "None"
    return (getattr(annotation, "__name__", None) or str(annotation)).replace("typing.", "")
