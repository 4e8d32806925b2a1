"""The runner: check the recipe, run each stage, measure what it made, record everything.

It knows no technique by name: stages are plugins, and every stage's output is measured the
same way. `run(cfg, info)` is what `python -m pipeline` calls and what tests call directly.
"""

from __future__ import annotations

import atexit
import dataclasses
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

import pipeline
from pipeline.config.objectives import for_task
from pipeline.config.recipe import CheckedRecipe, RecipeStage, check_recipe
from pipeline.data.dataset import check_finite
from pipeline.errors import PipelineError
from pipeline.measure.tasks import task_named
from pipeline.models import build, check_compatible, on_data_loaded, starting_artifact
from pipeline.models.compat import model_origin
from pipeline.plugin.artifact import ModelArtifact
from pipeline.plugin.stage import StageContext
from pipeline.run.budget import Ledger, check_shipped
from pipeline.run.cache import DECODED, StageCache, cache_key, referenced_files
from pipeline.run.interrupts import raise_if_interrupted
from pipeline.run.layer_plan import LayerPlan, plan_layers
from pipeline.run.preflight import check_environment
from pipeline.run.summary import StageRow, table

if TYPE_CHECKING:
    from pipeline.data import Dataset

log = logging.getLogger("pipeline")


@dataclass(frozen=True)
class RunInfo:
    """Facts about this execution that come from the launcher rather than the recipe."""

    run_dir: Path
    recipe: str = "custom"
    overrides: tuple[str, ...] = ()
    sweep: str | None = None  # shared by every job of one Hydra multirun


@dataclass
class RunResult:
    """What a finished run produced."""

    rows: list[StageRow]
    artifact: ModelArtifact
    run_id: str | None  # None when tracking is off
    run_dir: Path
    exports: list[Path] = field(default_factory=list)


@dataclass(frozen=True)
class StageOutcome:
    """One stage's output, its measurements, and whether it came from the cache."""

    artifact: ModelArtifact
    metrics: Mapping[str, float]
    seconds: float
    cached: bool


def run(cfg: Any, info: RunInfo) -> RunResult:
    """Check the composed config, then execute it. Raises PipelineError on user mistakes."""
    return execute(check_recipe(cfg), info)


def execute(plan: CheckedRecipe, info: RunInfo) -> RunResult:
    """Run every stage of a checked plan in order, measuring and tracking after each."""
    from pipeline.tracking.mlflow_run import BackgroundTracker, NoTracking, flatten

    settings = plan.settings
    check_environment(settings)
    info = for_this_worker(plan, info)
    data = load_data(plan)
    if settings.cache:  # streamed splits may keep their decoded examples beside the stage cache
        data = data.with_cache(str(Path(settings.outputs) / "cache" / DECODED))
    layers = planned_layers(plan, data)  # a model no stage can work on fails here, before any training
    log.info("layer plan:\n%s", layers.table())
    info.run_dir.mkdir(parents=True, exist_ok=True)
    for suffix, text in ((".md", layers.table() + "\n"), (".json", layers.dumps())):
        (info.run_dir / f"layer_plan{suffix}").write_text(text)
    chief = plan.device.role.is_chief  # only the chief writes the cache and the MLflow run
    cache = StageCache(Path(settings.outputs) / "cache") if settings.cache and chief else None
    tracker = BackgroundTracker(settings.tracking, Path(settings.outputs)) if chief else NoTracking()
    rows: list[StageRow] = []
    exports: list[Path] = []
    artifact = starting_artifact(plan.model_builder)  # a file model's file; None: the first stage builds one
    input_key = "start"
    ledger = open_ledger(plan, artifact, data)
    budgeted = settings.budget.accuracy_drop is not None  # stages choose within it; the books are shown
    with tracker.start(" ".join([info.recipe, *info.overrides]), run_tags(plan, info, data)):
        tracker.log_params(flatten(resolved_config(plan)))
        tracker.log_text(yaml.safe_dump(plan.config, sort_keys=False), "recipe.yaml")
        tracker.log_file(info.run_dir / "layer_plan.md")
        tracker.log_file(info.run_dir / "layer_plan.json")
        measured: dict[str, Mapping[str, float]] = {}
        for index, planned in enumerate(plan.stages):
            raise_if_interrupted()
            log.info("[%d/%d] %s (%s)", index + 1, len(plan.stages), planned.name, planned.type)
            ctx = stage_context(plan, planned, index, info, data, measured, ledger if budgeted else None)
            input_key = stage_key(plan, planned, input_key, data)
            outcome = account(ledger, planned, run_stage(planned, artifact, ctx, input_key, cache, data, plan), budgeted)
            artifact = outcome.artifact
            measured[planned.name] = outcome.metrics
            rows.append(StageRow(planned.name, artifact.format.value, outcome.seconds, outcome.metrics, outcome.cached))
            tracker.log_stage(index, planned.name, {**outcome.metrics, "seconds": outcome.seconds})
            tracker.log_metrics({f"{planned.name}.{k}": v for k, v in reported_metrics(artifact).items()})
            log.info("    %s", ", ".join(f"{k}={v:.4g}" for k, v in outcome.metrics.items()))
            exports += artifact.exports
            for report in artifact.reports:
                tracker.log_file(artifact.path.parent / report, planned.name)
        tracker.set_tag("cached_stages", ",".join(row.stage for row in rows if row.cached) or "none")
        summary = table(rows, validation=budgeted, task=data.task)
        (info.run_dir / "summary.md").write_text(summary + "\n")
        (info.run_dir / "metrics.json").write_text(json.dumps([row.__dict__ for row in rows], indent=2))
        tracker.log_file(info.run_dir / "summary.md")
        tracker.log_file(info.run_dir / "metrics.json")
        for path in exports:
            tracker.log_file(path, "model")
        if ledger is not None and budgeted:
            (info.run_dir / "budget.md").write_text(ledger.table() + "\n")
            tracker.log_file(info.run_dir / "budget.md")
            tracker.log_metrics(ledger.totals())
        if ledger is not None:
            try:
                check_shipped(ledger, settings.budget)
            except PipelineError:
                show_summary(info, summary, ledger)  # the numbers behind the error, before it ends the run
                raise
        if settings.tracking.register_as:
            tracker.register(settings.tracking.register_as)
    show_summary(info, summary, ledger if budgeted else None)
    log.info("MLflow run %s in %s (experiment '%s')", tracker.run_id, settings.tracking.uri, settings.tracking.experiment)
    if exports:
        log.info("exported: %s", ", ".join(str(p) for p in exports))
    if tracker.registered:
        log.info("registered in the MLflow Model Registry as %s", tracker.registered)
    assert artifact is not None  # check_recipe guarantees at least one stage
    return RunResult(rows, artifact, tracker.run_id, info.run_dir, exports)


# The data of the latest run in this process: the jobs of a sweep under Hydra's basic launcher
# run one after another in one process and mostly read the same data.
_loaded: dict[str, Dataset] = {}


def load_data(plan: CheckedRecipe) -> Dataset:
    """Load the configured data source, logging the split sizes."""
    log.info("loading data '%s'", plan.settings.data["name"])
    config = plan.data_source.config.model_dump(mode="json")
    task = plan.settings.task
    source = json.dumps([config, plan.settings.seed, task, file_stamps(config)], sort_keys=True)
    if source not in _loaded:
        _loaded.clear()
        # Sources that read only classes keep their one-argument `load` (check_recipe refused other tasks).
        _loaded[source] = plan.data_source.load(plan.settings.seed, task) if task != "classification" else (
            plan.data_source.load(plan.settings.seed)
        )
    data = _loaded[source]
    log.info(
        "data: %d train, %d validation, %d test examples of shape %s, %s",
        len(data.x_train), len(data.x_val), len(data.x_test), data.input_shape, described_labels(data),
    )
    check_finite(data, plan.settings.data["name"])
    on_data_loaded(plan.model_builder, data)  # before any model is built (a Keras 3 file is checked on the data)
    return data


def described_labels(data: Dataset) -> str:
    """What the labels are, for the log: classes, a value in its unit, or label columns."""
    if data.task == "regression" and data.target_scale is not None:
        return f"regression targets (mean {data.target_scale[0]:.4g}, std {data.target_scale[1]:.4g})"
    if data.task == "multilabel":
        return f"{data.num_classes} labels ({', '.join(data.labels)})"
    return f"{data.num_classes} classes"


def planned_layers(plan: CheckedRecipe, data: Dataset) -> LayerPlan:
    """Build the model once (a data/model mismatch fails here), then ask every stage what it will do to each layer."""
    seed_everything(plan.settings.seed)  # a fresh session: layer names as the first stage will build them
    model = check_compatible(plan.model_builder, data)
    for planned in plan.stages:  # models a stage builds for itself must fit the data too
        planned.stage.check_data(data, f"stages.{planned.name}")
    return plan_layers(model, plan.stages, model_origin(plan.model_builder))


def file_stamps(tree: Any) -> list[Any]:
    """Size and modification time of every file a config names (a folder's files included), so
    that data changed on disk between two runs in one process is read again."""
    if isinstance(tree, dict):
        return [file_stamps(value) for value in tree.values()]
    if isinstance(tree, list):
        return [file_stamps(value) for value in tree]
    if not (isinstance(tree, str) and tree and Path(tree).exists()):
        return []
    paths = sorted(Path(tree).rglob("*")) if Path(tree).is_dir() else [Path(tree)]
    return [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in paths if p.is_file()]


def stage_context(
    plan: CheckedRecipe, planned: RecipeStage, index: int, info: RunInfo, data: Dataset,
    measured: dict[str, Mapping[str, float]], ledger: Ledger | None = None,
) -> StageContext:
    """The context one stage runs in, with its own work folder and what earlier stages measured."""
    workdir = info.run_dir / "stages" / f"{index}_{planned.name}"
    workdir.mkdir(parents=True, exist_ok=True)
    return StageContext(
        name=planned.name,
        index=index,
        workdir=workdir,
        run_dir=info.run_dir,
        seed=plan.settings.seed,
        data=data,
        build_model=lambda: plan.device.place_model(build(plan.model_builder, data)),
        log=log,
        device=plan.device,
        config=resolved_config(plan),
        measurements=dict(measured),
        budget=ledger.budget() if ledger is not None else None,
    )


def stage_key(plan: CheckedRecipe, planned: RecipeStage, input_key: str, data: Dataset) -> str:
    """The cache key of a stage's output: everything that determines it, its input's key included."""
    config = planned.stage.config.model_dump(mode="json")
    model = plan.model_builder.config.model_dump(mode="json")
    if planned.stage.uses_budget:  # its output is chosen within the budget
        config = {**config, "budget": {"accuracy_drop": plan.settings.budget.accuracy_drop}}
    return cache_key(
        stage=planned.type,
        plugin=f"{type(planned.stage).__module__}.{type(planned.stage).__qualname__}",
        config=config,
        input=input_key,
        data=data.fingerprint(),
        model=model,
        files=referenced_files([config, model]),
        seed=plan.settings.seed,
        device=plan.device.numerics(),
    )


def run_stage(
    planned: RecipeStage, model: ModelArtifact | None, ctx: StageContext,
    key: str, cache: StageCache | None, data: Dataset, plan: CheckedRecipe,
) -> StageOutcome:
    """Reuse the stage's cached output when present, else run and measure it (and store it)."""
    from pipeline.measure.metrics import measure, metric_names

    # Stored measurements are reused only if they hold every metric the runner takes today.
    measure_id = json.dumps({**plan.settings.measure.model_dump(), "metrics": metric_names(data.task)}, sort_keys=True)
    if cache is None or not type(planned.stage).cacheable:
        return compute(planned, model, ctx, data, plan)
    with cache.lock(key):
        # Every worker of a multi-worker run must train every stage together: the cache is only written.
        entry = None if plan.device.multi_worker else cache.get(key)
        if entry is not None:
            artifact = cache.restore(entry, ctx.workdir, ctx.name, model)
            metrics = entry.record["measurements"].get(measure_id) or measure(artifact, data, plan.settings.measure)
            log.info("    reused from the stage cache (%s)", key[:12])
            return StageOutcome(artifact, metrics, 0.0, cached=True)
        outcome = compute(planned, model, ctx, data, plan)
        cache.put(key, planned.type, outcome.artifact, ctx.workdir, {measure_id: outcome.metrics})
        return outcome


def compute(planned: RecipeStage, model: ModelArtifact | None, ctx: StageContext, data: Dataset, plan: CheckedRecipe) -> StageOutcome:
    """Run the stage through its contract (`Stage.execute`), then measure its output."""
    from pipeline.measure.metrics import measure

    started = time.perf_counter()
    seed_everything(ctx.seed + ctx.index)
    with ctx.device.scope():  # models a stage makes or loads live on the configured devices
        artifact = planned.stage.execute(model, ctx)
    seconds = time.perf_counter() - started
    if model is not None and model.stage in ctx.measurements and same_file(artifact.path, model.path):
        metrics = ctx.measurements[model.stage]  # handed on unchanged (export copies its input)
    else:
        metrics = measure(artifact, data, plan.settings.measure)
    return StageOutcome(artifact, metrics, seconds, cached=False)


def show_summary(info: RunInfo, summary: str, ledger: Ledger | None) -> None:
    """Log the end-of-run table, and the budget's books when given."""
    log.info("summary of %s:\n%s", info.recipe, summary)
    if ledger is not None:
        log.info("%s", ledger.table())


def open_ledger(plan: CheckedRecipe, start: ModelArtifact | None, data: Dataset) -> Ledger | None:
    """The books of the accuracy budget and of the safety net; None when the recipe opts out of both.

    The reference is the first trained model: the first stage's output when that stage can build
    (train) a model, else the saved model the recipe starts from (a recipe that quantizes a file).
    """
    params = plan.settings.budget
    allowed = params.accuracy_drop if params.accuracy_drop is not None else params.margin(task_named(data.task).relative)
    if allowed is None:
        return None
    if len(data.y_val) == 0:
        log.info("no validation split (data.val_fraction=0): the safety net cannot check the shipped model")
        return None
    label = "accuracy budget" if params.accuracy_drop is not None else "safety net"
    ledger = Ledger(allowed, label=label, task=data.task)
    if start is not None and None not in type(plan.stages[0].stage).accepts:
        from pipeline.measure.metrics import validation_score

        ledger.record(start.stage, validation_score(start, data))
    return ledger


def account(ledger: Ledger | None, planned: RecipeStage, outcome: StageOutcome, budgeted: bool = True) -> StageOutcome:
    """Note the stage's validation accuracy in the books (as the runner measured it: no second pass).
    With a budget (`budgeted`): the outcome with what the stage spent of it; a stage that chose within
    the budget (`uses_budget`) and handed on a model below its floor stops the run here."""
    if ledger is None:
        return outcome
    accuracy = outcome.metrics[task_named(ledger.task).val_primary]
    spent = ledger.record(planned.name, accuracy)
    if not budgeted:
        return outcome
    budget = ledger.budget()
    assert budget is not None  # just recorded
    if planned.stage.uses_budget:
        if not budget.meets(accuracy):
            raise PipelineError(planned.stage.over_budget(outcome.artifact, accuracy, budget.floor, f"stages.{planned.name}"))
        log.info("    within the budget: validation %s %.4f, limit %.4f", budget.metric.primary, accuracy, budget.floor)
    return dataclasses.replace(outcome, metrics={**outcome.metrics, **spent})


def same_file(first: Path, second: Path) -> bool:
    """Whether two paths hold the same bytes (directories never count as the same)."""
    if not (first.is_file() and second.is_file()) or first.stat().st_size != second.stat().st_size:
        return False
    return first.read_bytes() == second.read_bytes()


def reported_metrics(artifact: ModelArtifact) -> dict[str, float]:
    """Numbers a stage reports about its own work: its `metrics` (e.g. distill's teacher) and
    its `gate` (the accuracies a gate compared, as `gate_NAME`)."""
    found = {**artifact.metrics, **{f"gate_{k}": v for k, v in artifact.gate.items()}}
    return {k: float(v) for k, v in found.items()}


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and TensorFlow before a stage builds or trains anything.

    Seeding per stage (not once per run) keeps a stage's result independent of whether the stages
    before it ran or came from the cache. Clearing the Keras session resets layer-name counters,
    which end up in TFLite tensor names: without it a second run in one process (a sweep) would
    export different bytes for the same model.
    """
    import tf_keras as keras

    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)


def resolved_config(plan: CheckedRecipe) -> dict[str, Any]:
    """The config with every default filled in: what the run actually used."""
    stages = {p.name: {"type": p.type, **p.stage.config.model_dump(mode="json")} for p in plan.stages}
    return {
        "seed": plan.settings.seed,
        "cache": plan.settings.cache,
        "data": plan.data_source.config.model_dump(mode="json"),
        "model": plan.model_builder.config.model_dump(mode="json"),
        "measure": plan.settings.measure.model_dump(mode="json"),
        "stages": stages,
    }


def run_tags(plan: CheckedRecipe, info: RunInfo, data: Dataset) -> dict[str, str]:
    """Tags to filter and group runs by in the MLflow UI."""
    tags = {
        "recipe": info.recipe,
        "stages": " -> ".join(p.name for p in plan.stages),
        "data": plan.settings.data["name"],
        "data_fingerprint": data.fingerprint(),
        "model": plan.settings.model["name"],
        "device": plan.device.resolve().kind,
        "strategy": plan.device.resolve().strategy,
        "pipeline_version": pipeline.__version__,
        "objectives": ",".join(for_task(plan.settings.objectives, plan.settings.task)),
        "task": plan.settings.task,
        "mlflow.note.content": plan.settings.description,
    }
    if info.sweep:
        tags["sweep"] = info.sweep
    return tags


def for_this_worker(plan: CheckedRecipe, info: RunInfo) -> RunInfo:
    """Resolve the device (logged once) and give a non-chief worker a temporary run folder.

    Resolving first matters: multi-worker training must configure TensorFlow before it runs any
    op. Other workers run every stage too (training is collective) but keep nothing.
    """
    log.info("device: %s", plan.device.start().summary())
    if plan.device.role.is_chief:
        return info
    role = plan.device.role
    folder = Path(tempfile.mkdtemp(prefix=f"pipeline-worker{role.index}-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    log.info("worker %d of %d: outputs go to %s and are not kept", role.index, role.workers, folder)
    return dataclasses.replace(info, run_dir=folder)
