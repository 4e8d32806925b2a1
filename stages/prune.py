"""prune: TFMOT magnitude pruning (unstructured or m:n structured) with fine-tuning, stripped before hand-off."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from pipeline.errors import PipelineError
from pipeline.plugin.artifact import Effect, ModelArtifact, ModelFormat
from pipeline.plugin.stage import Stage, StageContext
from pipeline.private_api import prunable
from pipeline.run.layer_plan import Action, LayerPlan, StagePlan
from techniques.distillation import accuracy_on_logits, distillation_loss, label_width, teacher_of, teacher_targets
from techniques.layers import (
    LayerChoice,
    acted_on,
    choose_layers,
    kernel_share,
    kernel_sizes,
    left_alone,
    wrap_layers,
)
from techniques.pruning import NARROW, check_sparsity, mask_schedule, pruning_schedule
from techniques.sparsity_targets import (
    PLAN,
    ZERO,
    SparsityTarget,
    check_target,
    in_words,
    lowest,
    overall,
    resolve,
    with_targets,
)
from techniques.training import FitParams, compile_model, fit, save_keras, steps_per_epoch


class PruneParams(FitParams, LayerChoice):
    """Parameters of the prune stage."""

    final_sparsity: SparsityTarget = Field(
        0.5,
        description=(
            "Share of each pruned layer's weights set to zero: one number, a mapping by layer name or type "
            "with a default (e.g. {default: 0.8, Conv2D: 0.5}), or plan: the per-layer plan of an earlier sensitivity stage."
        ),
    )
    initial_sparsity: float = Field(0.0, ge=0, lt=1, description="Sparsity at the start of a polynomial schedule.")
    schedule: Literal["polynomial", "constant"] = Field(
        "polynomial", description="polynomial ramps sparsity up; constant prunes to the target at once."
    )
    m_by_n: list[int] | None = Field(
        None, min_length=2, max_length=2,
        description="[m, n]: m zeros in every n consecutive input weights (e.g. [2, 4]); sets final_sparsity to m/n.",
    )
    epochs: int = Field(4, ge=1, le=10_000, description="Fine-tuning passes over the training split.")
    learning_rate: float = Field(5e-4, gt=0, le=10, description="Fine-tuning optimizer step size.")
    ramp_fraction: float = Field(
        0.7, gt=0, le=1,
        description="Share of fine-tuning steps over which sparsity reaches its target; the rest recovers accuracy.",
    )
    frequency: int | None = Field(
        None, ge=1, description="Steps between mask updates; default: about 10 updates over the ramp."
    )
    teacher_alpha: float = Field(
        0.0, ge=0, le=1,
        description=(
            "Weight of the distillation teacher's softened outputs while fine-tuning (0: the labels alone); "
            "needs a distill stage earlier, whose teacher and temperature it uses."
        ),
    )

    _target_form = field_validator("final_sparsity", mode="before")(lambda cls, value: check_target(value))

    @model_validator(mode="before")
    @classmethod
    def _m_by_n_sets_the_target(cls, values: Any) -> Any:
        pattern = values.get("m_by_n") if isinstance(values, dict) else None
        if isinstance(pattern, list) and len(pattern) == 2 and all(isinstance(v, int) and v > 0 for v in pattern):
            if pattern[0] >= pattern[1]:
                raise ValueError("m_by_n: m must be smaller than n, e.g. [2, 4]")
            values = {**values, "final_sparsity": values.get("final_sparsity", pattern[0] / pattern[1])}
            target = values["final_sparsity"]
            if not isinstance(target, (int, float)) or abs(target - pattern[0] / pattern[1]) > 1e-9:
                raise ValueError(f"final_sparsity must be {pattern[0] / pattern[1]} with m_by_n {pattern}; leave it out")
        return values

    @model_validator(mode="after")
    def _ramps_up(self) -> PruneParams:
        if self.initial_sparsity > lowest(self.final_sparsity):
            raise ValueError("initial_sparsity must not exceed final_sparsity (any layer's)")
        return self


class PruneStage(Stage[PruneParams]):
    """Magnitude pruning to `final_sparsity` (or m:n structured) with a polynomial or constant schedule."""

    @property
    def uses_budget(self) -> bool:
        return self.config.final_sparsity == PLAN  # the pipeline chose the sparsities, within the budget

    def layer_plan(self, model: Any, earlier: LayerPlan, where: str) -> StagePlan:
        """Which layers are pruned (to what, when targets differ by layer) and which stay dense (and why), before any training."""
        actions = self.choose(model, where)
        return StagePlan(actions, f"prunes {self.target()}; left dense: {left_alone(model, actions, 'pruned')}")

    def choose(self, model: Any, where: str, plan: dict[str, float] | None = None) -> dict[str, Action]:
        """`pruned` or `dense` with the reason, for every layer with a kernel; with per-layer targets each
        pruned layer names its own (a sensitivity `plan` is known only when the stage runs)."""
        pattern = self.config.m_by_n

        def why_not(layer: Any) -> str | None:
            if not prunable(layer):
                return "not prunable"
            # m:n groups run along the input channels; a layer with fewer cannot hold the pattern.
            if pattern is not None and layer.get_weights()[0].shape[-2] % pattern[1]:
                return f"{NARROW} {pattern[1]}"
            return None

        supported = choose_layers(model, self.config, why_not, where, "pruned", "dense")
        target = self.config.final_sparsity
        targets = None if target == PLAN and plan is None else resolve(model, target, plan, where)
        return with_targets(supported, targets, per_layer=not isinstance(target, (int, float)), where=where)

    def target(self) -> str:
        """The sparsity asked for, in words."""
        if self.config.m_by_n:
            return f"to {self.config.m_by_n[0]}:{self.config.m_by_n[1]} structured sparsity"
        return in_words(self.config.final_sparsity)

    def check_input(self, input_format: ModelFormat | None, effects: frozenset[Effect], where: str) -> None:
        if self.config.final_sparsity == PLAN and Effect.SPARSITY_PLANNED not in effects:
            raise PipelineError(
                f"{where}.final_sparsity: 'plan' takes the per-layer plan of a sensitivity stage, but none comes "
                f"before this one (with no training or channel pruning in between); add "
                f"`sensitivity: {{target_sparsity: 0.8}}` before it or give numbers"
            )
        if self.config.teacher_alpha and Effect.DISTILLED not in effects:
            raise PipelineError(
                f"{where}.teacher_alpha: the model reaching {where} has no teacher; "
                f"put a distill stage before it or set {where}.teacher_alpha=0"
            )

    def over_budget(self, output: ModelArtifact, accuracy: float, floor: float, where: str) -> str:
        """Planned sparsity the runner measured below the floor: less sparsity, more fine-tuning or more budget."""
        planner = output.metadata.get("sparsity_plan_stage", "sensitivity")
        return (
            f"{where}.final_sparsity: the planned {output.metadata['sparsity_plan_target']:.1%} sparsity leaves validation "
            f"accuracy {accuracy:.4f}, below the budget's floor {floor:.4f}; lower stages.{planner}.target_sparsity, "
            f"raise {where}.epochs or give more budget (budget.accuracy_drop)"
        )

    def effects_after(self, incoming: frozenset[Effect]) -> frozenset[Effect]:
        """Pruned; fine-tuning moves clustered weights off their shared values."""
        return (incoming - {Effect.CLUSTERED}) | {Effect.PRUNED}

    def run(self, model: ModelArtifact | None, ctx: StageContext) -> ModelArtifact:
        import tensorflow_model_optimization as tfmot

        assert model is not None  # guaranteed by `accepts`
        params = self.config
        where = f"stages.{ctx.name}"
        self.check_input(model.format, model.effects, where)  # also when called without a checked recipe
        sparsity = tfmot.sparsity.keras
        keras_model = model.load_keras()
        total_steps = params.epochs * steps_per_epoch(ctx.data, ctx.device, params)
        end_step, frequency = mask_schedule(params.ramp_fraction, params.frequency, total_steps)
        pattern = tuple(params.m_by_n) if params.m_by_n else None
        plan = model.metadata.get("sparsity_plan")
        actions = self.choose(keras_model, where, plan)
        names, dense = acted_on(actions, "pruned"), [n for n, a in actions.items() if a.kind != "pruned"]
        targets = {n: t for n, t in resolve(keras_model, params.final_sparsity, plan, where).items() if n in names}
        share = kernel_share(keras_model, dense)
        too_narrow = [n for n, a in actions.items() if a.why.startswith(NARROW)]  # for the m:n pattern
        # The overall share counts the layers a mapping or plan leaves at 0, as the plan did.
        chosen = [n for n, a in actions.items() if a.kind == "pruned" or a.why == ZERO]
        sizes = {n: kernel_sizes(keras_model.get_layer(n)) for n in chosen}
        planned = overall(sizes, targets)
        ctx.log.info("    pruning %d layers %s; left dense: %s", len(names), self.target(), left_alone(keras_model, actions, "pruned"))
        ctx.log.info(
            "    pruning %s: %.1f%% of their weights by step %d, mask update every %d steps",
            ", ".join(f"{n} {100 * t:.0f}%" for n, t in targets.items()), 100 * planned, end_step, frequency,
        )

        def wrap(layer: Any) -> Any:
            schedule = pruning_schedule(params.schedule, params.initial_sparsity, targets[layer.name], end_step, frequency)
            return sparsity.prune_low_magnitude(layer, pruning_schedule=schedule, sparsity_m_by_n=pattern)

        pruned = wrap_layers(keras_model, names, wrap)
        fine_tune(pruned, model, ctx, params, callbacks=[sparsity.UpdatePruningStep()])
        stripped = sparsity.strip_pruning(pruned)
        achieved = check_sparsity(stripped, targets, params.m_by_n, ctx.name)
        return save_keras(
            stripped, model, ctx.workdir, ctx.name, ctx.log, effects=self.output_effects(model),
            target_sparsity=overall({n: sizes[n] for n in names}, targets),
            layer_sparsity=targets, m_by_n=list(pattern) if pattern else None, pruned_layers=names, dense_layers=dense,
            left_dense=too_narrow,
            metrics={
                "pruned_layers_sparsity": achieved, "dense_share": share,
                **({"layers_left_dense": float(len(too_narrow))} if pattern else {}),
            },
        )



def fine_tune(keras_model: Any, model: ModelArtifact, ctx: StageContext, params: PruneParams, callbacks: list[Any]) -> None:
    """Fit on the labels, or with `teacher_alpha` on the distillation teacher's outputs as well."""
    if not params.teacher_alpha:
        compile_model(keras_model, params, task=ctx.data.task)
        fit(keras_model, params, ctx.data, ctx.device, seed=ctx.seed + ctx.index, log=ctx.log, name=ctx.name, callbacks=callbacks)
        return
    teacher, temperature = teacher_of(model, ctx.data, f"stages.{ctx.name}", ctx.log)
    ctx.log.info("    fine-tuning on the distillation teacher's outputs (alpha %.2f, T %.1f)", params.teacher_alpha, temperature)
    labels = label_width(ctx.data)
    loss = distillation_loss("kl", params.teacher_alpha, temperature, task=ctx.data.task, labels=labels)
    compile_model(keras_model, params, loss=loss, metrics=[accuracy_on_logits(task=ctx.data.task, labels=labels)])
    fit(
        keras_model, params, ctx.data, ctx.device, seed=ctx.seed + ctx.index, log=ctx.log, name=ctx.name, callbacks=callbacks,
        targets=teacher_targets(teacher, ctx.data),
    )
