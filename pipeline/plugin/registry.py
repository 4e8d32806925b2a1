"""Plugin discovery through entry points.

Built-in and third-party plugins are found the same way: a package declares, in its
pyproject.toml, `[project.entry-points."pipeline.stages"] name = "module:Class"` (likewise
`pipeline.data` and `pipeline.models`). Loading a plugin imports only its module, which must keep
TensorFlow imports inside its methods so that validation stays fast.
"""

from __future__ import annotations

import os
import sys
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from pipeline.errors import PipelineError, quoted
from pipeline.plugin.schema import suggest

STAGES = "pipeline.stages"
DATA = "pipeline.data"
MODELS = "pipeline.models"
KINDS = {STAGES: "stage", DATA: "data source", MODELS: "model"}


_found: dict[tuple, dict[str, EntryPoint]] = {}


def available(group: str) -> dict[str, EntryPoint]:
    """Entry points of `group` by name.

    Reading them scans every installed distribution (about 40 ms here), once per plugin a recipe
    names. The result is kept until sys.path or one of its folders changes: an install adds a
    dist-info folder, which changes its folder's modification time.
    """
    key = (group, *((entry, mtime(entry)) for entry in sys.path))
    if key not in _found:
        _found[key] = {ep.name: ep for ep in entry_points(group=group)}
    return _found[key]


def mtime(path: str) -> int:
    """Modification time of `path` in nanoseconds, or -1 when it does not exist."""
    try:
        return os.stat(path or ".").st_mtime_ns
    except OSError:
        return -1


def load(group: str, name: str, where: str) -> Any:
    """The plugin class registered as `name` in `group`, or a PipelineError naming `where`."""
    found = available(group)
    if name not in found:
        raise PipelineError(f"{where}: unknown {KINDS.get(group, group)} {quoted(name)}{suggest(name, list(found))}")
    try:
        return found[name].load()
    except Exception as error:  # a broken third-party plugin must not look like a user typo
        raise PipelineError(
            f"{where}: plugin '{name}' ({found[name].value}) failed to load: {error}"
        ) from error
