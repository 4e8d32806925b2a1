"""Attention-head pruning: rank the heads of every MultiHeadAttention layer and rebuild it with fewer.

Ranking follows Michel et al., "Are Sixteen Heads Really Better than One?" (2019): a head's
importance is the expected absolute gradient of the loss with respect to a gate `xi_h` that
scales the head's output, `I_h = E_x |dL(x)/d xi_h|`, measured on held-out examples. The gate
needs no change to the layer: head h reaches the output only through the slice `W_o[h]` of the
output projection (heads, head_dim, dim), so scaling the head by `xi_h` is scaling that slice, and
at `xi = 1` the gate's gradient is `sum(W_o[h] * dL/dW_o[h])`. The gradient is taken one example
at a time, so the absolute value is per example, as in the paper (a batch gradient would let
examples that pull a head opposite ways cancel out).

Removal: a head is whole slices of four kernels (query, key and value kernels are (dim, heads,
head_dim), the output kernel (heads, head_dim, dim)) and of three biases; the rebuilt layer has
fewer heads of the same width and the same input and output width, so nothing around it changes.
Its outputs equal those of the original layer with the removed heads' output slices zeroed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from pipeline.errors import PipelineError

ATTENTION = "MultiHeadAttention"
SAMPLES = 512  # held-out examples the importance is averaged over: plenty to rank a few heads per layer


def attention_layers(model: Any) -> list[Any]:
    """The MultiHeadAttention layers of a flat model, in graph order."""
    return [layer for layer in model.layers if type(layer).__name__ == ATTENTION]


def head_counts(model: Any, share: float, where: str) -> dict[str, tuple[int, int]]:
    """Per attention layer that loses heads: (heads, heads kept) when `share` of each layer's heads go."""
    if share and not attention_layers(model):
        raise PipelineError(f"{where}.heads: the model has no MultiHeadAttention layer whose heads could go; set {where}.heads=0")
    counts = {}
    for layer in attention_layers(model):
        heads = int(layer.get_config()["num_heads"])
        kept = heads - int(round(share * heads))
        if kept < 1:
            raise PipelineError(
                f"{where}.heads: removing {share:.0%} of {layer.name}'s {heads} heads leaves none; lower it (every layer keeps a head)"
            )
        if kept < heads:
            counts[layer.name] = (heads, kept)
    return counts


def head_importance(model: Any, x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    """Per attention layer, each head's mean |dL/d gate| over (at most SAMPLES of) `x`, `y` (Michel et al. 2019)."""
    import tensorflow as tf

    layers = attention_layers(model)
    kernels = [output_kernel(layer) for layer in layers]  # (heads, head_dim, dim): the gates' only path

    # One example per call: the absolute value must be taken per example, and a batch-1 gradient
    # traced once is faster on small models than a vectorised Jacobian, whose tracing dominates.
    @tf.function(input_signature=[tf.TensorSpec((1, *x.shape[1:]), tf.as_dtype(x.dtype)), tf.TensorSpec((1,), tf.int64)])
    def gates(ids: Any, label: Any) -> list[Any]:
        with tf.GradientTape() as tape:
            loss = tf.keras.losses.sparse_categorical_crossentropy(label, model(ids, training=False), from_logits=True)
        return [tf.abs(tf.reduce_sum(g * k, axis=[1, 2])) for g, k in zip(tape.gradient(loss, kernels), kernels)]

    count = min(len(x), SAMPLES)
    totals = [np.zeros(int(k.shape[0])) for k in kernels]
    for i in range(count):
        for total, gate in zip(totals, gates(x[i : i + 1], np.asarray(y[i : i + 1], np.int64))):
            total += gate.numpy()
    return {layer.name: total / max(1, count) for layer, total in zip(layers, totals)}


def choose_heads(counts: Mapping[str, tuple[int, int]], importance: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Per layer, the indices of the heads that stay: the most important ones in their original order
    (without importance, the first ones: enough for a plan, which needs only the shapes)."""
    kept = {}
    for name, (heads, count) in counts.items():
        ranked = np.arange(heads) if importance is None else np.argsort(-importance[name], kind="stable")
        kept[name] = np.sort(ranked[:count])
    return kept


def heads_at_step(final: Mapping[str, tuple[int, int]], step: int, steps: int) -> dict[str, tuple[int, int]]:
    """Heads each layer keeps after `step` of `steps`: a straight line from all of them to the final count."""
    return {name: (heads, int(round(heads - (heads - kept) * step / steps))) for name, (heads, kept) in final.items()}


def prune_heads(model: Any, counts: Mapping[str, tuple[int, int]], x: np.ndarray, y: np.ndarray) -> Any:
    """`model` with each attention layer in `counts` down to its kept count, the least important heads
    (measured on `x`, `y`) removed; the layers' current head counts are read from the model."""
    current = {layer.name: int(layer.get_config()["num_heads"]) for layer in attention_layers(model)}
    wanted = {name: (current[name], kept) for name, (_, kept) in counts.items() if kept < current[name]}
    if not wanted:
        return model
    return rebuild_heads(model, choose_heads(wanted, head_importance(model, x, y)))


def rebuild_heads(model: Any, kept: Mapping[str, np.ndarray]) -> Any:
    """A new model whose attention layers in `kept` have only the kept heads, every other weight copied."""
    import tf_keras as keras

    if not kept:
        return model

    def clone(layer: Any) -> Any:
        config = layer.get_config()
        if layer.name in kept:
            config["num_heads"] = len(kept[layer.name])
        return type(layer).from_config(config)

    smaller = keras.models.clone_model(model, clone_function=clone)
    for layer in model.layers:
        weights = layer.get_weights()
        if layer.name in kept:
            weights = head_slices(layer, kept[layer.name])
        if weights:
            smaller.get_layer(layer.name).set_weights(weights)
    return smaller


def head_slices(layer: Any, heads: np.ndarray) -> list[np.ndarray]:
    """An attention layer's weights restricted to `heads`."""
    result = []
    for variable, value in zip(layer.weights, layer.get_weights()):
        part = variable.name.split(":")[0].split("/")
        if part[-1] == "kernel" and part[-2] != "attention_output":  # query/key/value: (dim, heads, head_dim)
            result.append(value.take(heads, axis=1))
        elif part[-2] == "attention_output" and part[-1] == "bias":  # (dim,): shared by all heads
            result.append(value)
        else:  # query/key/value biases (heads, head_dim), output kernel (heads, head_dim, dim)
            result.append(value.take(heads, axis=0))
    return result


def output_kernel(layer: Any) -> Any:
    """The output projection's kernel variable of an attention layer, (heads, head_dim, dim)."""
    return next(v for v in layer.weights if v.name.split(":")[0].endswith("attention_output/kernel"))
