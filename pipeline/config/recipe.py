"""Resolve and check a whole recipe before any stage runs (and before TensorFlow is imported).

`check_recipe` turns the composed Hydra config into a `CheckedRecipe`: typed settings, the data source, the
model builder and the ordered stages with their parsed configs. Every mistake it finds is a
PipelineError with one line naming the dotted key and the fix.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pipeline.config import objectives
from pipeline.config.settings import RunSettings
from pipeline.device.params import DeviceParams
from pipeline.device.setup import DeviceSetup
from pipeline.errors import PipelineError, quoted
from pipeline.models import starting_format
from pipeline.models.compat import model_origin
from pipeline.plugin import registry
from pipeline.plugin.artifact import Effect, ModelFormat
from pipeline.plugin.schema import parse
from pipeline.plugin.stage import Stage


@dataclass(frozen=True)
class RecipeStage:
    """One recipe entry: its key in `stages`, its plugin type and the configured plugin."""

    name: str
    type: str
    stage: Stage


@dataclass(frozen=True)
class CheckedRecipe:
    """Everything a run needs, checked."""

    settings: RunSettings
    config: dict[str, Any]
    data_source: Any
    model_builder: Any
    stages: list[RecipeStage]
    device: DeviceSetup


def check_recipe(cfg: DictConfig | Mapping[str, Any]) -> CheckedRecipe:
    """Check the whole composed config; raise PipelineError on the first problem found."""
    config = to_plain(cfg)
    settings = parse(RunSettings, config, "")
    objectives.check(settings.objectives, task=settings.task)
    data_source = configure(registry.DATA, settings.data, "data")
    check_task(settings.task, data_source)
    model_builder = configure(registry.MODELS, settings.model, "model")
    stages = [plan_stage(name, values) for name, values in settings.stages.items()]
    if not stages:
        raise PipelineError("stages: the recipe has no stages; pick one with recipe=NAME or add a `stages:` mapping")
    check_order(stages, starting_format(model_builder), model_origin(model_builder))
    check_budget(settings, data_source, stages)
    device = DeviceSetup(parse(DeviceParams, settings.device, "device"))
    return CheckedRecipe(settings, config, data_source, model_builder, stages, device)


def to_plain(cfg: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    """Resolve interpolations and drop Hydra's own node, turning mistakes into one line."""
    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.create(dict(cfg))
    keys = [str(key) for key in cfg.keys() if key != "hydra"]
    try:
        resolved = OmegaConf.to_container(OmegaConf.masked_copy(cfg, keys), resolve=True, throw_on_missing=True)
        assert isinstance(resolved, dict)  # the composed config is a mapping
        return {str(key): value for key, value in resolved.items()}
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


def check_task(task: str, data_source: Any) -> None:
    """A source reads labels for the tasks it declares (`tasks`; classification only when it declares none)."""
    offered = getattr(type(data_source), "tasks", frozenset({"classification"}))
    if task not in offered:
        takers = sorted(
            name for name, entry in registry.available(registry.DATA).items() if task in getattr(entry.load(), "tasks", ())
        )
        raise PipelineError(
            f"task: data={data_source.config.name} gives {' or '.join(sorted(offered))} labels, not {task}; "
            f"use data={' or data='.join(takers)} for task={task}"
        )


def plan_stage(name: str, values: Any) -> RecipeStage:
    """Parse one `stages.NAME` entry; its `type` defaults to its key."""
    where = f"stages.{name}"
    if values is None:
        values = {}
    if not isinstance(values, Mapping):
        raise PipelineError(f"{where}: expected a mapping of parameters, got {quoted(values)}; write `{name}: {{}}` for defaults")
    params = dict(values)
    stage_type = params.pop("type", name)
    if not isinstance(stage_type, str):
        raise PipelineError(f"{where}.type: expected a stage type name, got {quoted(stage_type)}")
    plugin = registry.load(registry.STAGES, stage_type, f"{where}.type" if "type" in values else where)
    if not (isinstance(plugin, type) and issubclass(plugin, Stage)):
        raise PipelineError(f"{where}: plugin '{stage_type}' is not a pipeline.plugin.stage.Stage subclass")
    return RecipeStage(name, stage_type, plugin(parse(plugin.Config, params, where)))


def check_budget(settings: RunSettings, data_source: Any, stages: list[RecipeStage]) -> None:
    """A budget is measured on the validation split, so it needs one; stages check what they need of it."""
    if settings.budget.accuracy_drop is not None and getattr(data_source.config, "val_fraction", None) == 0:
        raise PipelineError(
            "budget.accuracy_drop: the budget is measured on the validation split, which data.val_fraction=0 "
            "leaves empty; set data.val_fraction (e.g. 0.1) or budget.accuracy_drop=null"
        )
    for planned in stages:
        planned.stage.check_settings(settings, f"stages.{planned.name}")


def check_order(stages: list[RecipeStage], start: ModelFormat | None = None, origin: str = "model") -> None:
    """Each stage must accept the format its predecessor hands on (or what the recipe starts from),
    and what the earlier stages did to the model (its `check_input`, fed their `effects_after`).

    `start` is the format of the model file the recipe starts from (a file model); None means
    the first stage starts from nothing and builds the model. `origin` names the model's config key.
    """
    current = start
    effects: frozenset[Effect] = frozenset()
    made_by = "the start of the recipe" if start is None else origin
    for index, planned in enumerate(stages):
        accepts = type(planned.stage).accepts
        if current not in accepts:
            wanted = " or ".join(sorted(f.value for f in accepts if f is not None))
            if start is ModelFormat.SAVED_MODEL and index == 0:
                raise PipelineError(cannot_start_from(planned.name, wanted, origin))
            reason = planned.stage.refusal(current, effects, made_by, f"stages.{planned.name}")
            if reason:
                raise PipelineError(f"stages.{planned.name}: {reason}")
            have = "no model yet" if current is None else f"a {current.value} model from {made_by}"
            # A recipe that trains nothing (quantize first) is meant for a saved model.
            or_file = " or start from a saved model (model=file model.path=FILE)" if current is None and index == 0 else ""
            raise PipelineError(
                f"stages.{planned.name}: needs a {wanted} model but gets {have}; "
                f"reorder the stages so that a stage producing {wanted} comes first{or_file}"
            )
        planned.stage.check_input(current, effects, f"stages.{planned.name}")
        current = type(planned.stage).output_format(current)
        effects = planned.stage.effects_after(effects)
        made_by = f"stages.{planned.name}"


def cannot_start_from(stage: str, wanted: str, origin: str) -> str:
    """Why the first stage cannot take the inference-only SavedModel the recipe starts from, and what to do."""
    takers = sorted(
        name for name, entry in registry.available(registry.STAGES).items()
        if ModelFormat.SAVED_MODEL in getattr(entry.load(), "accepts", ())
    )
    return (
        f"stages.{stage}: needs a {wanted} model, but the model ({origin}) is an inference-only SavedModel "
        "(a serving signature, no Keras model), which cannot be trained; start the recipe with a stage that "
        f"takes it ({', '.join(takers)}; e.g. recipe=ptq_int8), or give model.path the Keras model "
        "(model.save('model.keras'))"
    )
