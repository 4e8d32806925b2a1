"""How many channels each layer of a flat tf-keras graph keeps, and why the others stay whole.

The shares come from the channel_prune settings (`share`, per-layer `shares`, or the one found for a
MACs target); tied layers (through a residual Add) take the smallest share of their group. The
same answers make the layer plan before training and the removal during the stage.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from pipeline.data import Dataset
from pipeline.errors import PipelineError
from pipeline.private_api import is_graph_network
from pipeline.run.layer_plan import Action
from techniques.channel_graph import PRODUCERS, ChannelGraph, analyse
from techniques.layers import Chosen, check_names, check_patterns, matches
from techniques.surgery import counted_macs


class ChannelShares(Chosen, Protocol):
    """The settings the plan reads (the channel_prune stage's parameters)."""

    @property
    def share(self) -> float: ...

    @property
    def shares(self) -> dict[str, float]: ...

    @property
    def flops_target(self) -> float | None: ...


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


def layer_share(layer: Any, params: ChannelShares, overall: float) -> tuple[float, str]:
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
    model: Any, graph: ChannelGraph, params: ChannelShares, overall: float
) -> dict[int, tuple[int, float, str]]:
    """Per prunable group: channels to keep, the share removed and the key that set it; tied layers take the smallest share."""
    counts = {}
    for root, names in graph.prunable().items():
        share, key = min((layer_share(model.get_layer(n), params, overall) for n in names), key=lambda s: s[0])
        counts[root] = (graph.size[root] - int(round(share * graph.size[root])), share, key)
    return counts


Plan = dict[str, tuple[list[str], int, int]]  # first producer's name -> (tied producers, channels, channels kept)


def target_counts(model: Any, params: ChannelShares, where: str) -> tuple[Plan, float]:
    """Channels each group that loses some keeps in the end, keyed by its first producer layer's name,
    and the overall share behind it (`share`, or the one found for `flops_target`)."""
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


def search_share(model: Any, graph: ChannelGraph, params: ChannelShares, where: str) -> float:
    """The smallest overall share whose model keeps at most `flops_target` of the MACs (bisection)."""
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


def kept_whole(model: Any, graph: ChannelGraph, final: Plan, params: ChannelShares, overall: float) -> dict[str, str]:
    """Each Conv or Dense layer that keeps all its channels, and why: a setting, or the layer that needs them."""
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


def why_unchosen(layer: Any, size: int, params: ChannelShares, overall: float) -> str:
    """Why a layer whose channels could go keeps them all: the settings, or a tied layer that keeps its own."""
    share, key = layer_share(layer, params, overall)
    if key == "skip_layers":
        return "skip_layers" if matches(layer, params.skip_layers) else "not in layers"
    if not round(share * size):
        return f"{key} removes none of its {size} channels"
    return "tied through a merge to a layer that keeps its channels"


def channel_actions(model: Any, final: Plan, graph: ChannelGraph, params: ChannelShares, overall: float) -> dict[str, Action]:
    """`narrowed` (N -> M channels) or `whole` (and why) for every Conv and Dense layer."""
    actions = {name: Action(NARROWED, f"{size} -> {count} channels") for names, size, count in final.values() for name in names}
    actions.update({name: Action("whole", why) for name, why in kept_whole(model, graph, final, params, overall).items()})
    return {layer.name: actions[layer.name] for layer in model.layers if layer.name in actions}


def log_plan(model: Any, final: Plan, graph: ChannelGraph, params: ChannelShares, overall: float, log: logging.Logger) -> None:
    """The per-layer plan before any work: channels before and after, and what stays whole and why."""
    for names, size, count in final.values():
        tied = f" (tied: {', '.join(names)})" if len(names) > 1 else ""
        log.info("    %s: %d -> %d channels%s", names[0], size, count, tied)
    whole = kept_whole(model, graph, final, params, overall)
    if whole:
        log.info("    kept whole: %s", "; ".join(f"{name} ({why})" for name, why in whole.items()))


def validation_accuracy(model: Any, data: Dataset) -> dict[str, float]:
    """{"val_accuracy": ...} (the task's primary metric: `val_mae`, `val_micro_f1` for other tasks) on the
    validation split, {} without one: what choices such as `steps` are compared on."""
    if not len(data.x_val):
        return {}
    from pipeline.measure.metrics import keras_score
    from pipeline.measure.tasks import task_named

    return {task_named(data.task).val_primary: keras_score(model, data)}
