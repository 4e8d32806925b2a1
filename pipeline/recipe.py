"""Resolve and check a whole recipe before any stage runs (and before TensorFlow is imported).

`build_plan` turns the composed Hydra config into a `Plan`: typed settings, the data source, the
model builder and the ordered stages with their parsed configs. Every mistake it finds is a
PipelineError with one line naming the dotted key and the fix.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from pydantic import Field

from pipeline import registry
from pipeline.artifact import Effect, ModelFormat
from pipeline.devices import DeviceParams, DeviceSetup
from pipeline.errors import PipelineError
from pipeline.schema import Params, parse
from pipeline.stage import Stage


class MeasureParams(Params):
    """How the runner measures each stage's output."""

    latency_runs: int = Field(50, ge=1, description="Timed invocations at batch 1 after warm-up.")
    warmup_runs: int = Field(5, ge=0, description="Untimed invocations before timing.")
    threads: int = Field(1, ge=1, description="TFLite interpreter threads for latency and accuracy.")


class TrackingParams(Params):
    """Where runs are recorded."""

    uri: str = Field(description="MLflow tracking URI, e.g. sqlite:///outputs/mlflow.db or http://127.0.0.1:5000.")
    experiment: str = Field("pipeline", min_length=1, description="MLflow experiment name.")


class RunSettings(Params):
    """Top level of a composed config; `data`, `model` and `stages` are checked by their plugins."""

    seed: int = Field(42, ge=0, description="Seed for data splits, weight initialisation and shuffling.")
    outputs: str = Field("outputs", description="Folder for run directories, the stage cache and the local MLflow store.")
    cache: bool = Field(True, description="Reuse stage outputs whose inputs and settings are unchanged.")
    description: str = Field("", description="One line saying what the recipe does.")
    measure: MeasureParams = Field(default_factory=MeasureParams)
    tracking: TrackingParams
    data: dict[str, Any] = Field(description="Data source config (config group `data`).")
    model: dict[str, Any] = Field(description="Model config (config group `model`).")
    device: dict[str, Any] = Field(default_factory=dict, description="Device, strategy and precision (config group `device`).")
    stages: dict[str, Any] = Field(description="Ordered mapping of stage name to parameters.")


@dataclass(frozen=True)
class PlannedStage:
    """One recipe entry: its key in `stages`, its plugin type and the configured plugin."""

    name: str
    type: str
    stage: Stage


@dataclass(frozen=True)
class Plan:
    """Everything a run needs, checked."""

    settings: RunSettings
    config: dict[str, Any]
    data_source: Any
    model_builder: Any
    stages: list[PlannedStage]
    device: DeviceSetup


def build_plan(cfg: DictConfig | Mapping[str, Any]) -> Plan:
    """Check the whole composed config; raise PipelineError on the first problem found."""
    config = to_plain(cfg)
    settings = parse(RunSettings, config, "")
    data_source = configure(registry.DATA, settings.data, "data")
    model_builder = configure(registry.MODELS, settings.model, "model")
    stages = [plan_stage(name, values) for name, values in settings.stages.items()]
    if not stages:
        raise PipelineError("stages: the recipe has no stages; pick one with recipe=NAME or add a `stages:` mapping")
    check_order(stages)
    device = DeviceSetup(parse(DeviceParams, settings.device, "device"))
    return Plan(settings, config, data_source, model_builder, stages, device)


def to_plain(cfg: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    """Resolve interpolations and drop Hydra's own node, turning mistakes into one line."""
    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.create(dict(cfg))
    keys = [key for key in cfg.keys() if key != "hydra"]
    try:
        return OmegaConf.to_container(OmegaConf.masked_copy(cfg, keys), resolve=True, throw_on_missing=True)
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", None) or "config"
        reason = str(error).splitlines()[0]
        raise PipelineError(f"{key}: {reason}") from None


def configure(group: str, values: Mapping[str, Any], where: str) -> Any:
    """Instantiate the plugin named by `values['name']` with its parsed config."""
    name = values.get("name")
    if not isinstance(name, str):
        raise PipelineError(f"{where}.name: missing; pick one with {where}=NAME")
    plugin = registry.load(group, name, f"{where}.name")
    return plugin(parse(plugin.Config, values, where))


def plan_stage(name: str, values: Any) -> PlannedStage:
    """Parse one `stages.NAME` entry; its `type` defaults to its key."""
    where = f"stages.{name}"
    if values is None:
        values = {}
    if not isinstance(values, Mapping):
        raise PipelineError(f"{where}: expected a mapping of parameters, got {values!r}; write `{name}: {{}}` for defaults")
    params = dict(values)
    stage_type = params.pop("type", name)
    if not isinstance(stage_type, str):
        raise PipelineError(f"{where}.type: expected a stage type name, got {stage_type!r}")
    plugin = registry.load(registry.STAGES, stage_type, f"{where}.type" if "type" in values else where)
    if not (isinstance(plugin, type) and issubclass(plugin, Stage)):
        raise PipelineError(f"{where}: plugin '{stage_type}' is not a pipeline.stage.Stage subclass")
    return PlannedStage(name, stage_type, plugin(parse(plugin.Config, params, where)))


def check_order(stages: list[PlannedStage]) -> None:
    """Each stage must accept the format its predecessor hands on (or start from nothing), and
    what the earlier stages did to the model (its `check_input`, fed their `effects_after`)."""
    current: ModelFormat | None = None
    effects: frozenset[Effect] = frozenset()
    made_by = "the start of the recipe"
    for planned in stages:
        accepts = type(planned.stage).accepts
        if current not in accepts:
            wanted = " or ".join(sorted(f.value for f in accepts if f is not None))
            have = "no model yet" if current is None else f"a {current.value} model from {made_by}"
            raise PipelineError(
                f"stages.{planned.name}: needs a {wanted} model but gets {have}; "
                f"reorder the stages so that a stage producing {wanted} comes first"
            )
        planned.stage.check_input(current, effects, f"stages.{planned.name}")
        current = type(planned.stage).output_format(current)
        effects = planned.stage.effects_after(effects)
        made_by = f"stages.{planned.name}"
