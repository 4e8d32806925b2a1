"""Channel surgery: rank channels, choose the ones to keep, and rebuild a smaller dense model.

Ranking: the L1 (or L2) norm of each output filter after folding the BatchNormalization that
follows it, if any (Li et al., "Pruning Filters for Efficient ConvNets", 2017, rank by L1 filter
norm). Folding matters: a BatchNormalization rescales every channel to unit variance and then
by gamma, so the raw filter's norm says nothing about how much the channel contributes; the
folded filter `W * gamma / sqrt(var + eps)` is what actually reaches the next layer. Where
channels of several layers are tied (through Add), each layer's scores are divided by their mean
and summed, so every tied layer has an equal say in one decision for the whole group.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from pipeline.measure.macs import calls, layer_macs
from techniques.channel_graph import ChannelGraph, Layout

Kept = Mapping[int, np.ndarray]  # group representative -> sorted indices of the channels that stay


def scores(model: Any, graph: ChannelGraph, norm: str = "l1") -> dict[int, np.ndarray]:
    """Importance of every channel of every prunable group (higher: keep)."""
    ranked: dict[int, np.ndarray] = {}
    for root, names in graph.prunable().items():
        total = np.zeros(graph.size[root])
        for name in names:
            layer = model.get_layer(name)
            kernel = (layer.pointwise_kernel if hasattr(layer, "pointwise_kernel") else layer.kernel).numpy()
            filters = np.moveaxis(kernel, -1, 0).reshape(kernel.shape[-1], -1)
            filters = filters * batchnorm_scale(model, graph, name, kernel.shape[-1])[:, np.newaxis]
            score = np.abs(filters).sum(axis=1) if norm == "l1" else np.sqrt((filters**2).sum(axis=1))
            total += score / (score.mean() or 1.0)
        ranked[root] = total
    return ranked


def batchnorm_scale(model: Any, graph: ChannelGraph, producer: str, channels: int) -> np.ndarray:
    """gamma / sqrt(moving variance + epsilon) of the BatchNormalization right after `producer`, else ones."""
    follower = graph.followed_by.get(producer)
    if follower is None:
        return np.ones(channels)
    bn = model.get_layer(follower)
    variance = bn.moving_variance.numpy()
    gamma = bn.gamma.numpy() if bn.scale else np.ones_like(variance)
    return np.abs(gamma) / np.sqrt(variance + bn.epsilon)


def choose(ranked: Mapping[int, np.ndarray], counts: Mapping[int, int]) -> dict[int, np.ndarray]:
    """Per group, the `counts[group]` best channels, in their original order."""
    return {root: np.sort(np.argsort(-ranked[root], kind="stable")[: counts[root]]) for root in counts}


def indices(graph: ChannelGraph, layout: Layout, kept: Kept) -> np.ndarray:
    """Positions along a tensor's last axis that stay, for a layout and the kept channels."""
    parts, offset = [], 0
    for group in layout.groups:
        size = graph.size[group]
        parts.append(offset + np.asarray(kept.get(graph.find(group), np.arange(size))))
        offset += size
    positions = np.concatenate(parts) if parts else np.arange(0)
    if layout.repeat == 1:
        return positions
    return (np.arange(layout.repeat)[:, np.newaxis] * offset + positions[np.newaxis, :]).ravel()


def rebuild(model: Any, graph: ChannelGraph, kept: Kept) -> Any:
    """A new model with only the kept channels, every other weight copied as it was."""
    import tf_keras as keras

    def clone(layer: Any) -> Any:
        config = layer.get_config()
        role = graph.role.get(layer.name)
        if role == "producer":
            config["units" if "units" in config else "filters"] = len(indices(graph, graph.outputs[layer.name], kept))
        elif role == "reshape":
            config["target_shape"] = [*config["target_shape"][:-1], len(indices(graph, graph.outputs[layer.name], kept))]
        return type(layer).from_config(config)

    smaller = keras.models.clone_model(model, clone_function=clone)
    for layer in model.layers:
        weights = layer.get_weights()
        if weights and graph.role.get(layer.name) in ("producer", "per_channel"):
            weights = sliced(layer, graph, kept)
        if weights:
            smaller.get_layer(layer.name).set_weights(weights)
    return smaller


def sliced(layer: Any, graph: ChannelGraph, kept: Kept) -> list[np.ndarray]:
    """`layer`'s weights restricted to its kept input and output channels."""
    inputs = indices(graph, graph.inputs[layer.name], kept)
    outputs = indices(graph, graph.outputs[layer.name], kept)
    producer = graph.role[layer.name] == "producer"
    result = []
    for variable, value in zip(layer.weights, layer.get_weights()):
        name = variable.name.rsplit("/", 1)[-1].split(":")[0]
        if name == "depthwise_kernel":  # (..., in, multiplier): follows the input channels
            result.append(value.take(inputs, axis=-2))
        elif name in ("kernel", "pointwise_kernel"):  # (..., in, out)
            result.append(value.take(inputs, axis=-2).take(outputs, axis=-1))
        else:  # bias, gamma, beta, moving statistics: one value per output channel
            result.append(value.take(outputs if producer else inputs, axis=-1))
    return result


def counted_macs(model: Any, graph: ChannelGraph, counts: Mapping[int, int]) -> float:
    """MACs of the model that keeping `counts[group]` channels per group would give, without building it."""
    fraction = lambda layout: (  # noqa: E731 - share of a layout's channels that stay
        sum(counts.get(graph.find(g), graph.size[g]) for g in layout.groups) / max(1, sum(graph.size[g] for g in layout.groups))
    )
    total = 0.0
    for layer, node in calls(model):
        macs = layer_macs(layer, node)
        role = graph.role.get(layer.name)
        if role == "producer":
            macs *= fraction(graph.inputs[layer.name]) * fraction(graph.outputs[layer.name])
        elif role == "per_channel":
            macs *= fraction(graph.inputs[layer.name])
        total += macs
    return total
