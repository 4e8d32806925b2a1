"""Multiply-accumulates per example: what a model costs to run, counted from the artifact itself.

Counted for the layers that hold nearly all of a CNN's or a transformer's arithmetic: convolutions
(plain, depthwise, separable, transposed) and fully-connected layers, which do at every output
position one multiply-accumulate per weight of their kernel (positions x kernel size), and
multi-head attention: its four projections, counted the same way, and per head the two products
of attention (query x key for the scores, scores x value for the context). Bias adds,
normalisation, softmax, activations and pooling are left out, as is usual for MACs. A Keras model
is counted from its layers, a TFLite file from its operators and tensor shapes (attention's
products are its BATCH_MATMUL operators), so the number describes the file that ships.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

# TFLite operators counted, and the input index of their weights.
_TFLITE_WEIGHTS = {"CONV_2D": 1, "DEPTHWISE_CONV_2D": 1, "FULLY_CONNECTED": 1, "CONV_3D": 1, "TRANSPOSE_CONV": 1}


def keras_macs(model: Any) -> int:
    """MACs of one example through a tf-keras model, nested models included; a layer called twice counts twice."""
    return sum(layer_macs(layer, node) for layer, node in calls(model))


def calls(model: Any) -> list[tuple[Any, Any]]:
    """Every call of a layer in `model`'s own graph, inputs first, as (layer, node); (layer, None) per layer
    for a model without a graph (subclassed).

    A layer's first node may belong to another graph (the nested model it was flattened from, whose
    input size may be unknown), so shapes are read from the calls in this one.
    """
    from pipeline.private_api import is_graph_network, nodes_by_depth

    if not is_graph_network(model):
        return [(layer, None) for layer in model.layers]
    by_depth = nodes_by_depth(model)
    nodes = (node for depth in sorted(by_depth, reverse=True) for node in by_depth[depth])
    return [(node.layer, node) for node in nodes if not node.is_input]


def layer_macs(layer: Any, node: Any = None) -> int:
    """MACs of one example through one call of `layer` (`node`; default its first), 0 for layers without a kernel."""
    import tf_keras as keras

    if isinstance(layer, keras.Model):
        return keras_macs(layer)
    if isinstance(layer, keras.layers.MultiHeadAttention):
        return attention_macs(layer, node)
    kernels = [getattr(layer, name, None) for name in ("kernel", "depthwise_kernel", "pointwise_kernel")]
    size = sum(math.prod(k.shape) for k in kernels if k is not None)
    if not size:
        return 0
    # A transposed convolution applies its kernel at every input position, the others at every output one.
    transposed = "Transpose" in type(layer).__name__
    if node is not None:
        shape = node.input_shapes if transposed else node.output_shapes
    else:
        shape = layer.get_input_shape_at(0) if transposed else layer.get_output_shape_at(0)
    return int(size * math.prod(d or 1 for d in shape[1:-1]))


def attention_macs(layer: Any, node: Any = None) -> int:
    """MACs of one call of a MultiHeadAttention layer: the query, key, value and output projections
    at their positions, and every head's scores (query x key) and context (scores x value)."""
    if node is not None and len(node.call_args) + ("value" in node.call_kwargs) >= 2:
        query = node.call_args[0].shape
        value = (node.call_args[1] if len(node.call_args) > 1 else node.call_kwargs["value"]).shape
    else:  # a call outside a graph (a subclassed model): self-attention over its output's positions
        query = value = layer.get_output_shape_at(0)
    queries, keys = (math.prod(d or 1 for d in shape[1:-1]) for shape in (query, value))
    kernels = {weight.name.split("/")[-2]: weight.shape for weight in layer.weights if "kernel" in weight.name}
    size = {name: math.prod(shape) for name, shape in kernels.items()}
    heads, key_dim = kernels["query"][-2], kernels["query"][-1]
    value_dim = kernels["value"][-1]
    projections = queries * (size["query"] + size["attention_output"]) + keys * (size["key"] + size["value"])
    return int(projections + heads * queries * keys * (key_dim + value_dim))


def tflite_macs(path: Path) -> int:
    """MACs of one invocation of a .tflite file, from its operators' weight and output shapes."""
    from pipeline.measure.litert import read_model
    from pipeline.private_api import tflite_operator_names

    names = tflite_operator_names()
    model = read_model(path)
    total = 0
    for subgraph in model.subgraphs:
        for op in subgraph.operators:
            code = model.operatorCodes[op.opcodeIndex]
            name = names.get(max(code.builtinCode, code.deprecatedBuiltinCode))
            if name == "BATCH_MATMUL":  # attention's products: every output value sums over the shared depth
                left = subgraph.tensors[op.inputs[0]].shape
                depth = left[-2] if getattr(op.builtinOptions, "adjX", False) else left[-1]
                total += math.prod(int(d) for d in subgraph.tensors[op.outputs[0]].shape) * int(depth)
                continue
            if name not in _TFLITE_WEIGHTS:
                continue
            weights = subgraph.tensors[op.inputs[_TFLITE_WEIGHTS[name]]].shape
            # TRANSPOSE_CONV's inputs are (output shape, weights, input): positions are the input's.
            where = subgraph.tensors[op.inputs[2] if name == "TRANSPOSE_CONV" else op.outputs[0]].shape
            total += math.prod(int(d) for d in weights) * math.prod(int(d) for d in where[:-1])
    return int(total)
