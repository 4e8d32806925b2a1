"""Plugin discovery through entry points.

Built-in and third-party plugins are found the same way: a package declares, in its
pyproject.toml, `[project.entry-points."pipeline.stages"] name = "module:Class"` (likewise
`pipeline.data` and `pipeline.models`). Loading a plugin imports only its module, which must keep
TensorFlow imports inside its methods so that validation stays fast.
"""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points
from typing import Any

from pipeline.errors import PipelineError
from pipeline.schema import suggest

STAGES = "pipeline.stages"
DATA = "pipeline.data"
MODELS = "pipeline.models"
KINDS = {STAGES: "stage", DATA: "data source", MODELS: "model"}


def available(group: str) -> dict[str, EntryPoint]:
    """Entry points of `group` by name. Read afresh each call: installs may change at run time."""
    return {ep.name: ep for ep in entry_points(group=group)}


def load(group: str, name: str, where: str) -> Any:
    """The plugin class registered as `name` in `group`, or a PipelineError naming `where`."""
    found = available(group)
    if name not in found:
        raise PipelineError(f"{where}: unknown {KINDS.get(group, group)} '{name}'{suggest(name, list(found))}")
    try:
        return found[name].load()
    except Exception as error:  # a broken third-party plugin must not look like a user typo
        raise PipelineError(
            f"{where}: plugin '{name}' ({found[name].value}) failed to load: {error}"
        ) from error
