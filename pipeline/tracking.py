"""MLflow tracking: one run per pipeline execution.

The flattened recipe goes in as parameters; every stage's measurements go in twice, as
`<stage>.<metric>` (side by side in the compare view) and as `<metric>` with the stage index as
step (so the run's charts follow the model through the pipeline, and the latest value, the final
model's, is what run lists show).
"""

from __future__ import annotations

import fcntl
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipeline.recipe import TrackingParams

log = logging.getLogger(__name__)

_BATCH = 100  # MLflow's limit on parameters per log_batch call


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """`{"a": {"b": 1}}` -> `{"a.b": "1"}`; lists become their string form."""
    flat: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = str(value)
    return flat


class Tracker:
    """Writes one pipeline execution to an MLflow tracking store."""

    def __init__(self, params: TrackingParams, outputs: Path):
        from mlflow import MlflowClient

        self.params = params
        self.outputs = outputs
        self.run_id: str | None = None
        with self.store_lock():  # the client creates (and migrates) a new store right away
            self.client = MlflowClient(tracking_uri=params.uri)

    def experiment_id(self) -> str:
        """The configured experiment's id, created on first use.

        A local store keeps artifacts under `outputs/mlartifacts` rather than MLflow's default
        `./mlruns` in whatever directory the user happens to be in.
        """
        with self.store_lock():
            return self.find_or_create_experiment()

    @contextmanager
    def store_lock(self) -> Iterator[None]:
        """Serialise first use of a local SQLite store across processes.

        MLflow creates and migrates the database on first access; two parallel sweep jobs doing
        that at once fail with `duplicate column name`.
        """
        if not self.params.uri.startswith("sqlite:///"):
            yield
            return
        database = Path(self.params.uri.removeprefix("sqlite:///"))
        database.parent.mkdir(parents=True, exist_ok=True)
        with open(database.with_name(database.name + ".lock"), "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def find_or_create_experiment(self) -> str:
        """Look the experiment up, or create it (tolerating a concurrent creation)."""
        found = self.client.get_experiment_by_name(self.params.experiment)
        if found is not None:
            return found.experiment_id
        location = None
        if self.params.uri.startswith(("sqlite:", "file:")) or "://" not in self.params.uri:
            location = (self.outputs / "mlartifacts").resolve().as_uri()
        try:
            return self.client.create_experiment(self.params.experiment, artifact_location=location)
        except Exception:  # another job created it between our lookup and create
            found = self.client.get_experiment_by_name(self.params.experiment)
            if found is None:
                raise
            return found.experiment_id

    @contextmanager
    def start(self, run_name: str, tags: Mapping[str, str]) -> Iterator[Tracker]:
        """An MLflow run that ends FINISHED, FAILED on an error, or KILLED on Ctrl-C."""
        run = self.client.create_run(self.experiment_id(), run_name=run_name, tags=dict(tags))
        self.run_id = run.info.run_id
        status = "FAILED"
        try:
            yield self
            status = "FINISHED"
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        finally:
            self.client.set_terminated(self.run_id, status)

    def log_params(self, params: Mapping[str, str]) -> None:
        """Log parameters in batches that MLflow accepts."""
        from mlflow.entities import Param

        items = [Param(key, value) for key, value in params.items()]
        for start in range(0, len(items), _BATCH):
            self.client.log_batch(self.run_id, params=items[start : start + _BATCH])

    def log_stage(self, index: int, name: str, metrics: Mapping[str, float]) -> None:
        """One stage's measurements, per stage and as a step of the pipeline-wide series."""
        from mlflow.entities import Metric
        from mlflow.utils.time import get_current_time_millis

        now = get_current_time_millis()
        batch = [Metric(f"{name}.{key}", float(value), now, 0) for key, value in metrics.items()]
        batch += [Metric(key, float(value), now, index) for key, value in metrics.items()]
        self.client.log_batch(self.run_id, metrics=batch)

    def log_metrics(self, metrics: Mapping[str, float]) -> None:
        """Plain metrics, no step (numbers a stage reports about its own work)."""
        if metrics:
            from mlflow.entities import Metric
            from mlflow.utils.time import get_current_time_millis

            now = get_current_time_millis()
            self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()])

    def set_tag(self, key: str, value: str) -> None:
        """A tag decided during the run (e.g. which stages came from the cache)."""
        self.client.set_tag(self.run_id, key, value)

    def log_text(self, text: str, artifact_file: str) -> None:
        """A text artifact, such as the resolved recipe."""
        self.client.log_text(self.run_id, text, artifact_file)

    def log_file(self, path: Path, artifact_path: str | None = None) -> None:
        """A file or directory as run artifacts."""
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path)
        else:
            self.client.log_artifact(self.run_id, str(path), artifact_path)


class NoTracking:
    """Stands in for `Tracker` on the non-chief workers of a multi-worker run: records nothing."""

    run_id = "(recorded by the chief)"

    @contextmanager
    def start(self, run_name: str, tags: Mapping[str, str]) -> Iterator[NoTracking]:
        """No MLflow run; the chief records the run for every worker."""
        yield self

    def __getattr__(self, name: str) -> Any:
        # log_params, log_stage, set_tag, log_text, log_file: accepted and dropped.
        return lambda *args, **kwargs: None
