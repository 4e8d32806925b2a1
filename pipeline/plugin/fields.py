"""Reusable typed fields for plugin configs: paths checked when the recipe is validated.

A path that does not exist is reported before TensorFlow is imported or any data is read,
with the dotted key (`data.path`) and what the key should point at.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator


def _required(value: Any) -> Any:
    # Recipes list required paths as `null` so that `data.path=DIR` overrides work without `+`;
    # a path left at null must say how to set it rather than "expected a string".
    if value is None:
        raise ValueError("required")
    return value


def _exists(kind: Literal["file", "folder", "any"]):
    def check(value: str) -> str:
        path = Path(value).expanduser()
        if not path.exists():
            raise ValueError("no such file or folder")
        if kind == "file" and not path.is_file():
            raise ValueError("is a folder; point it at a file")
        if kind == "folder" and not path.is_dir():
            raise ValueError("is a file; point it at a folder")
        return str(path)

    return check


Required = Annotated[str, BeforeValidator(_required)]
"""A required text value a recipe lists as `null` until the user sets it."""

ExistingFile = Annotated[str, BeforeValidator(_required), AfterValidator(_exists("file"))]
"""A required path to an existing file."""

ExistingFolder = Annotated[str, BeforeValidator(_required), AfterValidator(_exists("folder"))]
"""A required path to an existing folder."""

OptionalFile = Annotated[str, AfterValidator(_exists("file"))]
"""A path to an existing file, for optional fields (`OptionalFile | None`: null means unset)."""

ExistingPath = Annotated[str, BeforeValidator(_required), AfterValidator(_exists("any"))]
"""A required path to an existing file or folder (a SavedModel is a folder, a .keras file is not)."""


def _switch_words(value: Any) -> Any:
    # `key=false` on the command line (and `key: false` in YAML) arrives as a boolean.
    return str(value).lower() if isinstance(value, bool) else value


Switch = Annotated[Literal["auto", "true", "false"], BeforeValidator(_switch_words)]
"""auto, true or false; booleans as Hydra and YAML parse `true`/`false` are taken as their words."""
