"""channel_prune: remove whole output channels and units, leaving a smaller dense model that runs faster.

Magnitude pruning (`prune`) zeroes weights inside unchanged tensors: the file compresses, but
dense kernels do the same work. This stage removes whole filters of Conv/SeparableConv layers
and units of Dense layers (with the matching input weights of the next layers, the channels of
BatchNormalization and depthwise layers in between, and channels tied through residual Adds),
then fine-tunes. The result is an ordinary, narrower Keras model: every later stage (magnitude
pruning, int8, QAT, distillation into it) and every runtime sees a smaller model. A nested model
(blocks, a keras.applications base called as a layer) is flattened into one graph first, so the
layers inside the blocks lose channels too; the layer plan shows, before any training, how many
channels each layer keeps and why the others stay whole.

It is its own stage rather than a `prune` setting because it hands on a different model (fewer
parameters, a new architecture) and takes different settings (a share of channels or a MACs
target, removal steps) than TFMOT's masks do; and a recipe can then use both, channel pruning
first and magnitude pruning of what is left after it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

import numpy as np
from pydantic import Field

from pipeline.errors import PipelineError
from pipeline.plugin.artifact import Effect, ModelArtifact
from pipeline.plugin.stage import Stage, StageContext
from pipeline.private_api import is_graph_network
from pipeline.run.layer_plan import Action, LayerPlan, StagePlan
from stages._layers import LayerChoice, check_names, check_patterns, left_alone, matches, require_layer_graph
from stages._training import FitParams, compile_model, fit, save_keras

if TYPE_CHECKING:
    from stages._channel_graph import ChannelGraph


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
        from stages._channel_graph import analyse
        from stages._surgery import choose, rebuild, scores

        require_layer_graph(model, where)
        final, share = target_counts(model, self.config, where)
        graph = analyse(model)
        actions = channel_actions(model, final, graph, self.config, share)
        counts = {root: entry[2] for root, names in graph.prunable().items() if (entry := planned(final, names)) is not None}
        narrower = rebuild(model, graph, choose(scores(model, graph, self.config.criterion), counts))
        removes = f"removes {share:.0%} of each layer's channels"
        if self.config.flops_target is not None:
            removes = f"keeps at most {self.config.flops_target:.0%} of the MACs ({removes.replace('removes', 'removing')})"
        summary = f"{removes}; kept whole: {left_alone(model, actions, NARROWED)}"
        return StagePlan(actions, summary, model=narrower)

    def run(self, model: ModelArtifact | None, ctx: StageContext) -> ModelArtifact:
        from pipeline.measure.macs import keras_macs
        from stages._channel_graph import analyse
        from stages._surgery import choose, rebuild, scores

        assert model is not None  # guaranteed by `accepts`
        params = self.config
        where = f"stages.{ctx.name}"
        current = flat_model(model.load_keras(), where, ctx.data.x_train[:32])
        before = keras_macs(current)
        final, share = target_counts(current, params, where)
        if params.flops_target is not None:
            ctx.log.info("    share %.3f keeps at most %.0f%% of the MACs", share, 100 * params.flops_target)
        log_plan(current, final, analyse(current), params, share, ctx)
        for step, epochs in enumerate(spread(params.epochs, params.steps), start=1):
            graph = analyse(current)
            counts = {root: step_count(entry, step, params.steps) for root, names in graph.prunable().items()
                      if (entry := planned(final, names)) is not None}
            current = rebuild(current, graph, choose(scores(current, graph, params.criterion), counts))
            ctx.log.info("    step %d/%d: %.1f%% of the MACs left", step, params.steps, 100 * keras_macs(current) / before)
            if epochs:
                compile_model(current, params)
                fit(current, ctx, params.model_copy(update={"epochs": epochs}))
        kept = {name: count for name, (_, _, count) in final.items()}
        facts = {"macs_before": float(before), **validation_accuracy(current, ctx)}
        return save_keras(
            current, ctx, model, effects=self.output_effects(model), metrics=facts, channel_share=share, kept_channels=kept
        )


def flat_model(keras_model: Any, where: str, sample: Any = None) -> Any:
    """The model as one flat graph of layers (nested models flattened, checked on `sample`); a one-line error
    for a subclassed model, which has no layer graph."""
    from pipeline.models.flatten import flatten

    if not is_graph_network(keras_model):
        raise PipelineError(
            f"{where}: the model is a subclassed Keras model (no layer graph); channel pruning needs a functional or "
            "Sequential model: build it with keras.Model(inputs, outputs) or keras.Sequential"
        )
    return flatten(keras_model, sample, where)


def layer_share(layer: Any, params: ChannelPruneParams, overall: float) -> tuple[float, str]:
    """The share of `layer`'s channels to remove, and the parameter key that set it."""
    kind = type(layer).__name__
    if matches(layer, params.skip_layers) or (params.layers and not matches(layer, params.layers)):
        return 0.0, "skip_layers"
    if layer.name in params.shares:
        return params.shares[layer.name], f"shares.{layer.name}"
    if kind in params.shares:
        return params.shares[kind], f"shares.{kind}"
    return overall, "share"


def group_counts(
    model: Any, graph: ChannelGraph, params: ChannelPruneParams, overall: float
) -> dict[int, tuple[int, float, str]]:
    """Per prunable group: channels to keep, the share removed and the key that set it; tied layers take the smallest share."""
    counts = {}
    for root, names in graph.prunable().items():
        share, key = min((layer_share(model.get_layer(n), params, overall) for n in names), key=lambda s: s[0])
        counts[root] = (graph.size[root] - int(round(share * graph.size[root])), share, key)
    return counts


Plan = dict[str, tuple[list[str], int, int]]  # first producer's name -> (tied producers, channels, channels kept)


def target_counts(model: Any, params: ChannelPruneParams, where: str) -> tuple[Plan, float]:
    """Channels each group that loses some keeps in the end, keyed by its first producer layer's name,
    and the overall share behind it (`share`, or the one found for `flops_target`)."""
    from stages._channel_graph import analyse

    check_names(model, params, where)
    check_patterns(model, params.shares, f"{where}.shares")
    graph = analyse(model)
    if not graph.prunable():
        whole = ", ".join(f"{name} ({why})" for name, why in kept_whole(model, graph, {}, params, 0.0).items())
        raise PipelineError(
            f"{where}: no layer's channels can be removed: {whole}; remove {where} from the recipe "
            "(prune zeroes weights of any Dense or Conv layer instead), or replace the layers named"
        )
    overall = params.share if params.flops_target is None else search_share(model, graph, params, where)
    final = {}
    for root, (count, share, key) in group_counts(model, graph, params, overall).items():
        names = graph.prunable()[root]
        if count < 1:
            raise PipelineError(
                f"{where}.{key}: removing {share:.0%} of {', '.join(names)}'s {graph.size[root]} channels leaves none; "
                f"lower it or list the layer in {where}.skip_layers"
            )
        if count < graph.size[root]:
            final[names[0]] = (names, graph.size[root], count)
    return final, overall


def search_share(model: Any, graph: ChannelGraph, params: ChannelPruneParams, where: str) -> float:
    """The smallest overall share whose model keeps at most `flops_target` of the MACs (bisection)."""
    from stages._surgery import counted_macs

    assert params.flops_target is not None  # the caller searches only for a target
    target = params.flops_target
    full = counted_macs(model, graph, {})

    def macs_at(share: float) -> float | None:
        counts = group_counts(model, graph, params, share)
        if any(count < 1 for count, _, _ in counts.values()):
            return None  # some layer would be left empty: too much
        return counted_macs(model, graph, {root: count for root, (count, _, _) in counts.items()})

    low, high = 0.0, 0.999
    reachable = macs_at(high)
    while reachable is None and high > 1e-3:  # the largest share that leaves every layer a channel
        high *= 0.98
        reachable = macs_at(high)
    if reachable is None or reachable > target * full:
        least = (reachable or full) / full
        raise PipelineError(
            f"{where}.flops_target: {100 * target:.3g}% of the MACs is out of reach, the fewest this model can "
            f"keep is {100 * least:.3g}% (layers that must keep their channels do the rest); raise {where}.flops_target"
        )
    for _ in range(30):
        middle = (low + high) / 2
        value = macs_at(middle)
        if value is not None and value <= target * full:
            high = middle
        else:
            low = middle
    return high


def planned(final: Plan, names: list[str]) -> tuple[list[str], int, int] | None:
    """The plan's entry for the group of producers `names`, if it loses channels."""
    return next((final[name] for name in names if name in final), None)


def step_count(entry: tuple[list[str], int, int], step: int, steps: int) -> int:
    """Channels a group keeps after `step` of `steps`: a straight line from all of them to the final count."""
    _, size, target = entry
    return int(round(size - (size - target) * step / steps))


def spread(epochs: int, steps: int) -> list[int]:
    """`epochs` shared out over `steps`, later steps taking the remainder (they remove the most-used channels)."""
    return [epochs // steps + (1 if i >= steps - epochs % steps else 0) for i in range(steps)]


NARROWED = "narrowed"


def kept_whole(model: Any, graph: ChannelGraph, final: Plan, params: ChannelPruneParams, overall: float) -> dict[str, str]:
    """Each Conv or Dense layer that keeps all its channels, and why: a setting, or the layer that needs them."""
    from stages._channel_graph import PRODUCERS

    narrowed = {name for names, _, _ in final.values() for name in names}
    whole = {}
    for layer in model.layers:
        if type(layer).__name__ not in PRODUCERS or layer.name in narrowed:
            continue
        group = graph.producer_group.get(layer.name)
        if group is None:
            whole[layer.name] = "its kernel mixes channels in a way channel pruning leaves alone"
        elif graph.fixed(group):
            whole[layer.name] = graph.why_fixed(group) or "its channels are fixed"
        else:
            whole[layer.name] = why_unchosen(layer, graph.size[group], params, overall)
    return whole


def why_unchosen(layer: Any, size: int, params: ChannelPruneParams, overall: float) -> str:
    """Why a layer whose channels could go keeps them all: the settings, or a tied layer that keeps its own."""
    share, key = layer_share(layer, params, overall)
    if key == "skip_layers":
        return "skip_layers" if matches(layer, params.skip_layers) else "not in layers"
    if not round(share * size):
        return f"{key} removes none of its {size} channels"
    return "tied through a merge to a layer that keeps its channels"


def channel_actions(model: Any, final: Plan, graph: ChannelGraph, params: ChannelPruneParams, overall: float) -> dict[str, Action]:
    """`narrowed` (N -> M channels) or `whole` (and why) for every Conv and Dense layer."""
    actions = {name: Action(NARROWED, f"{size} -> {count} channels") for names, size, count in final.values() for name in names}
    actions.update({name: Action("whole", why) for name, why in kept_whole(model, graph, final, params, overall).items()})
    return {layer.name: actions[layer.name] for layer in model.layers if layer.name in actions}


def log_plan(model: Any, final: Plan, graph: ChannelGraph, params: ChannelPruneParams, overall: float, ctx: StageContext) -> None:
    """The per-layer plan before any work: channels before and after, and what stays whole and why."""
    for names, size, count in final.values():
        tied = f" (tied: {', '.join(names)})" if len(names) > 1 else ""
        ctx.log.info("    %s: %d -> %d channels%s", names[0], size, count, tied)
    whole = kept_whole(model, graph, final, params, overall)
    if whole:
        ctx.log.info("    kept whole: %s", "; ".join(f"{name} ({why})" for name, why in whole.items()))


def validation_accuracy(model: Any, ctx: StageContext) -> dict[str, float]:
    """{"val_accuracy": ...} on the validation split, {} without one: what choices such as `steps` are compared on."""
    data = ctx.data
    if not len(data.x_val):
        return {}
    logits = model.predict(data.x_val, batch_size=256, verbose=0)
    return {"val_accuracy": float(np.mean(np.argmax(logits, axis=-1) == data.y_val))}
