"""The stage plugin contract: a typed config, the formats it accepts, and one `run` method."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pipeline.artifact import Effect, ModelArtifact, ModelFormat
from pipeline.devices import DeviceParams, DeviceSetup
from pipeline.schema import P, Params, Plugin

if TYPE_CHECKING:
    from pipeline.budget import Budget
    from pipeline.data import Dataset
    from pipeline.layer_plan import LayerPlan, StagePlan
    from pipeline.recipe import RunSettings


@dataclass(frozen=True)
class StageContext:
    """What a running stage may use besides its input model.

    `workdir` is this stage's own folder; `run_dir` holds the run's shared outputs (export/).
    `build_model` makes a fresh model of the configured architecture for the data's input shape
    and class count (a stage that starts from nothing, such as train, calls it).
    `device` is where training runs: the runner enters `device.scope()` around the stage, and
    the shared training helpers take batch sizes, XLA and input pipelines from it.
    `config` is the run's resolved configuration (every default filled in) and `measurements`
    what the runner measured after each earlier stage, by stage name. `budget` is the recipe's
    accuracy budget as it stands before this stage (None without one, or in the first stage).
    """

    name: str
    index: int
    workdir: Path
    run_dir: Path
    seed: int
    data: Dataset
    build_model: Callable[[], Any]
    log: logging.Logger
    device: DeviceSetup = field(default_factory=lambda: DeviceSetup(DeviceParams()))
    config: Mapping[str, Any] = field(default_factory=dict)
    measurements: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    budget: Budget | None = None


class Stage(Plugin[P]):
    """Base class of stage plugins.

    Subclasses set `Config` (a `Params` schema), `accepts` (input formats; `None` in it means the
    stage can start without a model) and implement `run`. Import TensorFlow inside `run`, never at
    module level, so that listing and validating recipes stays fast.
    """

    Config: ClassVar[type[Params]] = Params
    accepts: ClassVar[frozenset[ModelFormat | None]] = frozenset({ModelFormat.KERAS})
    produces: ClassVar[ModelFormat] = ModelFormat.KERAS
    # Whether the runner may reuse this stage's output from the stage cache. A stage whose work
    # lies outside its workdir (export writes to the run's export/ folder) must say False.
    cacheable: ClassVar[bool] = True

    @property
    def uses_budget(self) -> bool:
        """Whether this stage chooses within the accuracy budget: a changed budget recomputes it
        rather than reusing a cached output, and the runner stops the run if the model it hands
        on measures below the budget's floor (see `over_budget`)."""
        return False

    def over_budget(self, output: ModelArtifact, accuracy: float, floor: float, where: str) -> str:
        """The one-line error when this stage chose within the budget but the runner measured its
        output's validation accuracy `accuracy` below `floor`; stages name the settings to change."""
        return (
            f"{where}: the model this stage chose has validation accuracy {accuracy:.4f}, below the accuracy budget's "
            f"floor {floor:.4f}; give more budget (budget.accuracy_drop)"
        )

    def run(self, model: ModelArtifact | None, ctx: StageContext) -> ModelArtifact:
        """Make this stage's output artifact under `ctx.workdir` from `model`."""
        raise NotImplementedError

    def check_input(self, input_format: ModelFormat | None, effects: frozenset[Effect], where: str) -> None:
        """Raise PipelineError if this stage cannot take the model the earlier stages hand it.

        Called at validation time after `accepts` has passed, for rules a set of formats cannot
        express: a stage that needs a teacher file when no model precedes it, or one that keeps
        sparsity and so needs a pruned model. `effects` is what the incoming model will have been
        through, from the earlier stages' `effects_after`. `where` is `stages.NAME`.
        """

    def check_settings(self, settings: RunSettings, where: str) -> None:
        """Raise PipelineError if this stage cannot run under the run-level settings (e.g. it
        chooses within an accuracy budget but the recipe sets none). Called at validation time."""

    def check_data(self, data: Dataset, where: str) -> None:
        """Raise PipelineError if this stage cannot work on the loaded `data` (a model the stage builds
        itself cannot take its examples or classes). Called once the data is loaded, after the recipe's
        model has been checked against it and before any stage runs."""

    def layer_plan(self, model: Any, earlier: LayerPlan, where: str) -> StagePlan | None:
        """What this stage will do to each layer of `model` (a tf-keras model), without training.

        `earlier` holds what the stages before it will have done (e.g. which layers were pruned).
        None (the default) means the stage changes no layer in particular. A stage that acts layer
        by layer raises `pipeline.layer_plan.NeedsLayerGraph` for a model without a layer graph.
        """
        return None

    def effects_after(self, incoming: frozenset[Effect]) -> frozenset[Effect]:
        """What the model this stage hands on has been through, given what its input had.

        The default keeps everything (conversion and export change no weights). A stage that
        prunes or clusters adds its effect; one that trains without keeping them takes them away.
        Validation and the artifacts a stage makes both read this, so it is the one declaration.
        """
        return incoming

    def output_effects(self, model: ModelArtifact | None) -> frozenset[Effect]:
        """`effects_after` applied to the effects of `model` (none when the stage starts from nothing)."""
        return self.effects_after(model.effects if model is not None else frozenset())

    @classmethod
    def output_format(cls, input_format: ModelFormat | None) -> ModelFormat:
        """The format this stage hands on given its input's; export-like stages override it."""
        return cls.produces
