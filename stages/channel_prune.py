"""channel_prune: remove whole output channels and units, leaving a smaller dense model that runs faster.

Magnitude pruning (`prune`) zeroes weights inside unchanged tensors: the file compresses, but dense
kernels do the same work. This stage removes whole filters of Conv/SeparableConv layers and units of
Dense layers (with the matching input weights of the next layers, the channels of BatchNormalization
and depthwise layers in between, and channels tied through residual Adds), then fine-tunes. On a
transformer it also removes whole attention heads (`heads`), the least important first: importance
is the mean |gradient of the loss with respect to a gate on the head| on the validation split
(Michel et al. 2019, techniques.heads). The result is an ordinary, narrower Keras model: every later
stage (magnitude pruning, int8, QAT, distillation into it) and every runtime sees a smaller model. A
nested model (blocks, a keras.applications base called as a layer) is flattened into one graph
first, so the layers inside the blocks lose channels too; the layer plan shows, before any training,
how many channels each layer keeps and why the others stay whole.

It is its own stage rather than a `prune` setting because it hands on a different model (fewer
parameters, a new architecture) and takes different settings (a share of channels or a MACs
target, removal steps) than TFMOT's masks do; and a recipe can then use both, channel pruning
first and magnitude pruning of what is left after it.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field

from pipeline.plugin.artifact import Effect, ModelArtifact
from pipeline.plugin.stage import Stage, StageContext
from pipeline.run.layer_plan import Action, LayerPlan, StagePlan
from techniques.channel_graph import analyse
from techniques.channel_plan import (
    NARROWED,
    channel_actions,
    flat_model,
    log_plan,
    planned,
    spread,
    step_count,
    target_counts,
    validation_accuracy,
)
from techniques.heads import SAMPLES, choose_heads, head_counts, heads_at_step, prune_heads, rebuild_heads
from techniques.layers import LayerChoice, left_alone, require_layer_graph
from techniques.surgery import choose, rebuild, scores
from techniques.training import FitParams, compile_model, fit, save_keras


class ChannelPruneParams(FitParams, LayerChoice):
    """Parameters of the channel_prune stage."""

    share: float = Field(0.5, ge=0, lt=1, description="Share of each prunable layer's output channels removed.")
    shares: dict[str, Annotated[float, Field(ge=0, lt=1)]] = Field(
        default_factory=dict,
        description="Share per layer name or type, e.g. {Dense: 0.25, conv2d_1: 0.6}; a name beats a type, both beat `share`.",
    )
    flops_target: float | None = Field(
        None, gt=0, lt=1,
        description="Keep at most this share of the model's MACs; when set, the overall share is searched and `share` unused.",
    )
    heads: float = Field(
        0.0, ge=0, lt=1,
        description="Share of each MultiHeadAttention layer's heads removed, least important first (|gradient of the loss "
        "w.r.t. a gate on the head| on the validation split, Michel et al. 2019); every layer keeps at least one.",
    )
    criterion: Literal["l1", "l2"] = Field(
        "l1", description="Filter norm that ranks channels, after folding the BatchNormalization that follows."
    )
    steps: int = Field(1, ge=1, le=20, description="Removal steps, the epochs spread over them; 1: one-shot, then fine-tune.")
    epochs: int = Field(4, ge=0, le=10_000, description="Fine-tuning epochs in all (0: none, e.g. when distill follows).")
    learning_rate: float = Field(5e-4, gt=0, le=10, description="Fine-tuning optimizer step size.")


class ChannelPruneStage(Stage[ChannelPruneParams]):
    """Structured pruning: whole channels and units removed by filter norm, fine-tuned."""

    def effects_after(self, incoming: frozenset[Effect]) -> frozenset[Effect]:
        """Narrower; fine-tuning without masks lets pruned zeros grow back and clusters drift (without it, kept weights stay).
        A sensitivity plan measured on the wider layers no longer holds for the narrower ones."""
        kept = incoming if self.config.epochs == 0 else incoming - {Effect.PRUNED, Effect.CLUSTERED}
        return (kept - {Effect.SPARSITY_PLANNED}) | {Effect.CHANNEL_PRUNED}

    def layer_plan(self, model: Any, earlier: LayerPlan, where: str) -> StagePlan:
        """How many channels each layer keeps, and why the others stay whole; later stages plan on the narrower model."""
        require_layer_graph(model, where)
        final, share = target_counts(model, self.config, where)
        graph = analyse(model)
        actions = channel_actions(model, final, graph, self.config, share)
        counts = {root: entry[2] for root, names in graph.prunable().items() if (entry := planned(final, names)) is not None}
        heads = head_counts(model, self.config.heads, where)
        actions.update({name: Action(NARROWED, f"{size} -> {kept} heads") for name, (size, kept) in heads.items()})
        narrower = rebuild(model, graph, choose(scores(model, graph, self.config.criterion), counts))
        narrower = rebuild_heads(narrower, choose_heads(heads))  # which heads go needs data; the plan needs the shapes
        removes = f"removes {share:.0%} of each layer's channels"
        if self.config.flops_target is not None:
            removes = f"keeps at most {self.config.flops_target:.0%} of the MACs ({removes.replace('removes', 'removing')})"
        if heads:
            removes += f" and {self.config.heads:.0%} of each attention layer's heads"
        summary = f"{removes}; kept whole: {left_alone(model, actions, NARROWED)}"
        return StagePlan(actions, summary, model=narrower)

    def run(self, model: ModelArtifact | None, ctx: StageContext) -> ModelArtifact:
        from pipeline.measure.macs import keras_macs

        assert model is not None  # guaranteed by `accepts`
        params = self.config
        where = f"stages.{ctx.name}"
        current = flat_model(model.load_keras(), where, ctx.data.x_train[:32])
        before = keras_macs(current)
        final, share = target_counts(current, params, where)
        if params.flops_target is not None:
            ctx.log.info("    share %.3f keeps at most %.0f%% of the MACs", share, 100 * params.flops_target)
        log_plan(current, final, analyse(current), params, share, ctx.log)
        heads = head_counts(current, params.heads, where)
        for name, (size, left) in heads.items():
            ctx.log.info("    %s: %d -> %d heads", name, size, left)
        held_out = (ctx.data.x_val, ctx.data.y_val) if len(ctx.data.x_val) else (ctx.data.x_train, ctx.data.y_train)
        ranking = (np.asarray(held_out[0][:SAMPLES]), np.asarray(held_out[1][:SAMPLES]))
        for step, epochs in enumerate(spread(params.epochs, params.steps), start=1):
            graph = analyse(current)
            counts = {root: step_count(entry, step, params.steps) for root, names in graph.prunable().items()
                      if (entry := planned(final, names)) is not None}
            current = rebuild(current, graph, choose(scores(current, graph, params.criterion), counts))
            current = prune_heads(current, heads_at_step(heads, step, params.steps), *ranking)
            ctx.log.info("    step %d/%d: %.1f%% of the MACs left", step, params.steps, 100 * keras_macs(current) / before)
            if epochs:
                compile_model(current, params, task=ctx.data.task)
                fitting = params.model_copy(update={"epochs": epochs})
                fit(current, fitting, ctx.data, ctx.device, seed=ctx.seed + ctx.index, log=ctx.log, name=ctx.name)
        kept = {name: count for name, (_, _, count) in final.items()}
        facts = {"macs_before": float(before), **validation_accuracy(current, ctx.data)}
        return save_keras(
            current, model, ctx.workdir, ctx.name, ctx.log, effects=self.output_effects(model), metrics=facts,
            channel_share=share, kept_channels=kept,
            kept_heads={name: count for name, (_, count) in heads.items()},
        )
