"""The optional methods of a model plugin, called through these helpers (a plugin may have none).

Kept apart from pipeline.models.compat, which calls them too, so that no module of the package
imports the package itself.
"""

from __future__ import annotations

from typing import Any

from pipeline.plugin.artifact import ModelArtifact, ModelFormat


def starting_format(builder: Any) -> ModelFormat | None:
    """The format of the model file a recipe starts from; None when the first stage builds the model."""
    start_format = getattr(builder, "start_format", None)
    return start_format() if start_format is not None else None


def starting_artifact(builder: Any) -> ModelArtifact | None:
    """The model file the first stage gets as its input; None when it builds the model itself."""
    start = getattr(builder, "start", None)
    return start() if start is not None else None


def on_data_loaded(builder: Any, data: Any) -> None:
    """Call the plugin's `on_data_loaded(data)`, if it has one: the data is loaded and no model is built yet."""
    hook = getattr(builder, "on_data_loaded", None)
    if hook is not None:
        hook(data)
