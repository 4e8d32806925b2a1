"""The stage plugin contract: a typed config, the formats it accepts, and one `run` method.

The runner calls `Stage.execute`, never `run` directly: it runs the stage and then makes the
output honour the contract (lineage, metadata carried forward, declared effects, place and
format), so a plugin cannot forget any of it and a plugin that breaks it fails with one line.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, final

from pipeline.device.params import DeviceParams
from pipeline.device.setup import DeviceSetup
from pipeline.errors import PipelineError
from pipeline.plugin.artifact import Effect, ModelArtifact, ModelFormat
from pipeline.plugin.schema import P, Params, Plugin

if TYPE_CHECKING:
    from pipeline.config.settings import RunSettings
    from pipeline.data import Dataset
    from pipeline.run.budget import Budget
    from pipeline.run.layer_plan import LayerPlan, StagePlan


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

    Subclasses name their `Params` schema as the generic parameter (`class Round(Stage[RoundParams])`
    makes it `Config` and the type of `self.config`), set `accepts` (input formats; `None` in it
    means the stage can start without a model) and implement `run`. Import TensorFlow inside
    `run`, never at module level, so that listing and validating recipes stays fast.

    What `run` returns needs only its path, format and stage name (`ctx.name`), plus the stage's
    own metadata: `execute` fills in the parent, the parent's metadata and the effects.
    """

    Config: ClassVar[type[Params]] = Params
    accepts: ClassVar[frozenset[ModelFormat | None]] = frozenset({ModelFormat.KERAS})
    produces: ClassVar[ModelFormat] = ModelFormat.KERAS
    # Whether the runner may reuse this stage's output from the stage cache. A stage whose work
    # lies outside its workdir (export writes to the run's export/ folder) must say False.
    cacheable: ClassVar[bool] = True
    # Whether the artifact `run` returns lies in `ctx.workdir` (checked by `execute`; the stage
    # cache stores that folder). False for a stage that hands on a file it shipped elsewhere in
    # the run, or its input as it was (export hands on its copy in export/): its path must then
    # lie in `ctx.run_dir` or be a file of its input's lineage, and it cannot be cacheable.
    output_in_workdir: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "execute" in cls.__dict__:
            raise TypeError(f"{plugin_name(cls)}: execute is the runner's entry point and cannot be overridden; implement run")
        if not cls.output_in_workdir and cls.cacheable:
            raise TypeError(
                f"{plugin_name(cls)}: output_in_workdir = False needs cacheable = False (the stage cache keeps only the workdir)"
            )

    @final
    def execute(self, model: ModelArtifact | None, ctx: StageContext) -> ModelArtifact:
        """Run the stage and return its output as the contract describes it; what the runner calls.

        After `run`: the parent is the input unless the stage set one; the metadata is the
        parent's (`inherited_metadata`) updated with the stage's own keys; the effects are
        `output_effects(model)`, the one declaration of them (a stage that sets different ones on
        the artifact is wrong). Then the output must be a file in this stage's place (see
        `output_in_workdir`) in the format `output_format` promises; a PipelineError says which
        rule it breaks otherwise.
        """
        artifact = self.run(model, ctx)
        where = f"stages.{ctx.name} (plugin {plugin_name(type(self))})"
        if not isinstance(artifact, ModelArtifact):
            raise PipelineError(f"{where}: run() returned {type(artifact).__name__}, not a ModelArtifact")
        parent = artifact.parent if artifact.parent is not None else model
        effects = self.output_effects(model)
        if artifact.effects and artifact.effects != effects:
            raise PipelineError(
                f"{where}: run() returned effects {names(artifact.effects)} but effects_after declares "
                f"{names(effects)}; declare them in effects_after and leave the artifact's effects unset"
            )
        metadata = {**(self.inherited_metadata(parent) if parent is not None else {}), **artifact.metadata}
        output = dataclasses.replace(artifact, parent=parent, metadata=metadata, effects=effects)
        self.check_output(output, model, ctx, where)
        return output

    def check_output(self, output: ModelArtifact, model: ModelArtifact | None, ctx: StageContext, where: str) -> None:
        """Raise PipelineError if `output` is not a file of this stage, in its place and promised format."""
        expected = type(self).output_format(model.format if model is not None else None)
        if output.format is not expected:
            raise PipelineError(
                f"{where}: run() returned a {output.format.value} model but the stage declares {expected.value} "
                f"(produces/output_format); return {expected.value} or declare what it makes"
            )
        if output.stage != ctx.name:
            raise PipelineError(f"{where}: run() returned an artifact of stage '{output.stage}'; set its stage to ctx.name")
        if not output.path.exists():
            raise PipelineError(f"{where}: run() returned {output.path}, which does not exist; save the model there first")
        if type(self).output_in_workdir:
            if not inside(output.path, ctx.workdir):
                raise PipelineError(
                    f"{where}: run() returned {output.path}, outside the stage's folder {ctx.workdir}; "
                    "write the model under ctx.workdir"
                )
        elif not (inside(output.path, ctx.run_dir) or any(same_place(output.path, a.path) for a in (model.lineage() if model else []))):
            raise PipelineError(
                f"{where}: run() returned {output.path}, outside the run folder {ctx.run_dir} and not its input; "
                "write the model under ctx.run_dir"
            )

    def inherited_metadata(self, parent: ModelArtifact) -> Mapping[str, Any]:
        """The facts of `parent` this stage's output carries forward (its own keys then win): all
        of them by default, so a later stage still learns which layers an earlier one pruned. A
        stage whose output is a new model, not a changed one, overrides this to keep fewer."""
        return parent.metadata

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
        """Make this stage's output artifact under `ctx.workdir` from `model`.

        Called through `execute`, which completes the artifact (parent, inherited metadata,
        effects) and checks it; the metadata set here is only this stage's own facts."""
        raise NotImplementedError

    def check_input(self, input_format: ModelFormat | None, effects: frozenset[Effect], where: str) -> None:
        """Raise PipelineError if this stage cannot take the model the earlier stages hand it.

        Called at validation time after `accepts` has passed, for rules a set of formats cannot
        express: a stage that needs a teacher file when no model precedes it, or one that keeps
        sparsity and so needs a pruned model. `effects` is what the incoming model will have been
        through, from the earlier stages' `effects_after`. `where` is `stages.NAME`.
        """

    def refusal(self, input_format: ModelFormat | None, effects: frozenset[Effect], made_by: str, where: str) -> str | None:
        """Why this stage cannot take a model of `input_format` (one `accepts` lacks) from `made_by`, and
        what to do, in one line after `where: `; None (the default) gives the generic reorder advice.
        For a pairing users reach for that cannot work (a converted file handed to a converter)."""
        return None

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
        by layer raises `pipeline.run.layer_plan.NeedsLayerGraph` for a model without a layer graph.
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


def plugin_name(cls: type) -> str:
    """`module:Class`, as an entry point names a plugin."""
    return f"{cls.__module__}:{cls.__qualname__}"


def names(effects: frozenset[Effect]) -> str:
    """`{pruned, clustered}`: effects for a message, sorted."""
    return "{" + ", ".join(sorted(effect.value for effect in effects)) + "}"


def inside(path: Path, folder: Path) -> bool:
    """Whether `path` is `folder` or lies under it, symbolic links resolved."""
    return path.resolve().is_relative_to(folder.resolve())


def same_place(first: Path, second: Path) -> bool:
    """Whether two paths name the same file or folder."""
    return first.resolve() == second.resolve()
