"""The runner: check the recipe, run each stage, measure what it made, record everything.

It knows no technique by name: stages are plugins, and every stage's output is measured the
same way. `run(cfg, info)` is what `python -m pipeline` calls and what tests call directly.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

import pipeline
from pipeline.artifact import ModelArtifact
from pipeline.errors import PipelineError
from pipeline.recipe import Plan, build_plan
from pipeline.stage import StageContext
from pipeline.summary import StageRow, table

log = logging.getLogger("pipeline")


@dataclass(frozen=True)
class RunInfo:
    """Facts about this execution that come from the launcher rather than the recipe."""

    run_dir: Path
    recipe: str = "custom"
    overrides: tuple[str, ...] = ()


@dataclass
class RunResult:
    """What a finished run produced."""

    rows: list[StageRow]
    artifact: ModelArtifact
    run_id: str
    run_dir: Path
    exports: list[Path] = field(default_factory=list)


def run(cfg: Any, info: RunInfo) -> RunResult:
    """Check the composed config, then execute it. Raises PipelineError on user mistakes."""
    return execute(build_plan(cfg), info)


def execute(plan: Plan, info: RunInfo) -> RunResult:
    """Run every stage of a checked plan in order, measuring and tracking after each."""
    from pipeline.measure import measure
    from pipeline.tracking import Tracker, flatten

    settings = plan.settings
    log.info("loading data '%s'", settings.data["name"])
    data = plan.data_source.load(settings.seed)
    log.info(
        "data: %d train, %d validation, %d test examples of shape %s, %d classes",
        len(data.x_train), len(data.x_val), len(data.x_test), data.input_shape, data.num_classes,
    )
    info.run_dir.mkdir(parents=True, exist_ok=True)
    tracker = Tracker(settings.tracking, Path(settings.outputs))
    run_name = " ".join([info.recipe, *info.overrides])
    tags = run_tags(plan, info, data.fingerprint())

    rows: list[StageRow] = []
    exports: list[Path] = []
    artifact: ModelArtifact | None = None
    with tracker.start(run_name, tags):
        log.info("MLflow run %s in %s (experiment '%s')", tracker.run_id, settings.tracking.uri, settings.tracking.experiment)
        tracker.log_params(flatten(resolved_config(plan)))
        tracker.log_text(yaml.safe_dump(plan.config, sort_keys=False), "recipe.yaml")
        for index, planned in enumerate(plan.stages):
            log.info("[%d/%d] %s (%s)", index + 1, len(plan.stages), planned.name, planned.type)
            ctx = StageContext(
                name=planned.name,
                index=index,
                workdir=info.run_dir / "stages" / f"{index}_{planned.name}",
                run_dir=info.run_dir,
                seed=settings.seed,
                data=data,
                build_model=lambda: plan.model_builder.build(data.input_shape, data.num_classes),
                log=log,
            )
            ctx.workdir.mkdir(parents=True, exist_ok=True)
            started = time.perf_counter()
            artifact = planned.stage.run(artifact, ctx)
            seconds = time.perf_counter() - started
            metrics = measure(artifact, data, settings.measure)
            rows.append(StageRow(planned.name, artifact.format.value, seconds, metrics))
            tracker.log_stage(index, planned.name, {**metrics, "seconds": seconds})
            log.info("    %s", ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
            exports += [Path(p) for p in artifact.metadata.get("exports", [])]

        summary = table(rows)
        (info.run_dir / "summary.md").write_text(summary + "\n")
        (info.run_dir / "metrics.json").write_text(json.dumps([row.__dict__ for row in rows], indent=2))
        tracker.log_file(info.run_dir / "summary.md")
        tracker.log_file(info.run_dir / "metrics.json")
        for path in exports:
            tracker.log_file(path, "model")
    log.info("summary of %s:\n%s", info.recipe, summary)
    if exports:
        log.info("exported: %s", ", ".join(str(p) for p in exports))
    assert artifact is not None  # build_plan guarantees at least one stage
    return RunResult(rows, artifact, tracker.run_id, info.run_dir, exports)


def resolved_config(plan: Plan) -> dict[str, Any]:
    """The config with every default filled in: what the run actually used."""
    stages = {p.name: {"type": p.type, **p.stage.config.model_dump(mode="json")} for p in plan.stages}
    return {
        "seed": plan.settings.seed,
        "data": plan.data_source.config.model_dump(mode="json"),
        "model": plan.model_builder.config.model_dump(mode="json"),
        "measure": plan.settings.measure.model_dump(mode="json"),
        "stages": stages,
    }


def run_tags(plan: Plan, info: RunInfo, data_fingerprint: str) -> dict[str, str]:
    """Tags to filter and group runs by in the MLflow UI."""
    return {
        "recipe": info.recipe,
        "stages": " -> ".join(p.name for p in plan.stages),
        "data": plan.settings.data["name"],
        "data_fingerprint": data_fingerprint,
        "model": plan.settings.model["name"],
        "device": device_kind(),
        "pipeline_version": pipeline.__version__,
        "mlflow.note.content": plan.settings.description,
    }


def device_kind() -> str:
    """'gpu', 'tpu' or 'cpu': the best accelerator TensorFlow sees."""
    import tensorflow as tf

    for kind in ("TPU", "GPU"):
        if tf.config.list_logical_devices(kind):
            return kind.lower()
    return "cpu"
