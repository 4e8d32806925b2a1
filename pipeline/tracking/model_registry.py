"""The MLflow Model Registry: a run's shipped model as a new version of a registered model.

The version points at the run's `model/` artifacts (the exported files) and carries, as tags,
what a person picks a version by: its size, gzip size, test and validation accuracy, latency,
sparsity, the recipe and its overrides. `tracking.register_as=NAME` registers every run this way;
`python -m pipeline.report --register NAME` registers the best run of a sweep under a constraint.
"""

from __future__ import annotations

from typing import Any

from pipeline.errors import PipelineError

VERSION_METRICS = (
    "size_bytes", "gzip_bytes", "accuracy", "val_accuracy", "latency_p50_ms", "latency_p90_ms", "params", "sparsity", "macs",
)
VERSION_RUN_TAGS = ("recipe", "sweep", "stages", "data", "model", "objectives")


def version_tags(run: Any) -> dict[str, str]:
    """Tags of a new version: the run's final metrics, recipe and overrides."""
    metrics = run.data.metrics
    tags = {name: f"{metrics[name]:.6g}" for name in VERSION_METRICS if name in metrics}
    tags |= {name: run.data.tags[name] for name in VERSION_RUN_TAGS if run.data.tags.get(name)}
    tags["overrides"] = run.info.run_name or ""
    tags["run_id"] = run.info.run_id
    return tags


def register(client: Any, name: str, run_id: str) -> Any:
    """Register run `run_id`'s `model/` artifacts as a new version of `name` (created if absent)."""
    from mlflow.exceptions import MlflowException

    run = client.get_run(run_id)
    if not client.list_artifacts(run_id, "model"):
        raise PipelineError(f"tracking.register_as={name}: run {run_id} logged no model files; add an export stage")
    try:
        client.create_registered_model(name, description="Models shipped by the optimization pipeline.")
    except MlflowException as error:
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    return client.create_model_version(
        name, f"runs:/{run_id}/model", run_id=run_id, tags=version_tags(run),
        description=run.data.tags.get("mlflow.note.content", ""),
    )
