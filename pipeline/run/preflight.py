"""Checks of the world outside the recipe, made before any work: can we write, can we track.

They run after the recipe itself is valid (pipeline.config.recipe.check_recipe) and before Hydra makes a
run directory, so a read-only disk or a tracking server that is down costs the user seconds,
not a training run, and leaves nothing behind.
"""

from __future__ import annotations

import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from pipeline.config.settings import RunSettings
from pipeline.errors import PipelineError

HEALTH_TIMEOUT_S = 5


def check_environment(settings: RunSettings) -> None:
    """Raise PipelineError if outputs cannot be written or the tracking server does not answer."""
    check_writable(Path(settings.outputs), "outputs")
    uri = settings.tracking.uri
    if uri.startswith("sqlite:///"):
        database = Path(uri.removeprefix("sqlite:///"))
        check_writable(database.parent, "tracking.uri")
        check_database(database)
    elif uri.startswith(("http://", "https://")):
        check_server(uri.rstrip("/"))


def check_writable(folder: Path, key: str) -> None:
    """`folder` exists and is writable, or can be created inside a writable parent."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not can_create_files(existing):
        raise PipelineError(
            f"{key}: cannot write to {folder} ({existing} is not a writable folder); "
            f"choose a writable folder, e.g. {key}={'outputs' if key == 'outputs' else 'sqlite:///outputs/mlflow.db'}"
        )


def can_create_files(folder: Path) -> bool:
    """Try it: permission bits say nothing for root or on read-only mounts."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def check_database(path: Path) -> None:
    """`path` is absent, empty (MLflow creates the store) or an SQLite database."""
    if path.is_dir() or (path.is_file() and path.stat().st_size and not is_sqlite(path)):
        raise PipelineError(
            f"tracking.uri: {path} is not an SQLite database; point tracking.uri at the MLflow store "
            "or at a new file, e.g. tracking.uri=sqlite:///outputs/mlflow.db"
        )


def is_sqlite(path: Path) -> bool:
    """Whether the file starts with SQLite's header."""
    with open(path, "rb") as handle:
        return handle.read(16) == b"SQLite format 3\x00"


def check_server(url: str) -> None:
    """An MLflow server answers `GET /health` at `url`."""
    try:
        # A fresh opener reads the proxy settings now; urlopen's shared one keeps the first it saw.
        with urllib.request.build_opener().open(f"{url}/health", timeout=HEALTH_TIMEOUT_S) as answer:
            if answer.status == 200:
                return
            reason = f"HTTP {answer.status}"
    except urllib.error.HTTPError as error:
        reason = f"HTTP {error.code}"
    except (urllib.error.URLError, OSError) as error:
        reason = str(getattr(error, "reason", error))
    raise PipelineError(
        f"tracking.uri: no MLflow server answers at {url} ({reason}); start one with "
        f"`mlflow server --host 127.0.0.1 --port PORT` or drop the override to use the local store"
    )
