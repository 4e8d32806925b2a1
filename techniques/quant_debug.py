"""Full-integer TFLite models with chosen layers left float, and each layer's int8 error.

This is what `tf.lite.experimental.QuantizationDebugger` does inside, driven directly:
the converter calibrates once (`_experimental_calibrate_only`), then the MLIR quantizer
(`convert.mlir_quantize`) writes the int8 model with chosen nodes denylisted (kept float, with
QUANTIZE/DEQUANTIZE around them), or a debug model in which every quantized op is followed by a
NumericVerify op comparing it with a float copy fed the same input. Checked on TF 2.21, the
debugger itself does not serve: its NumericVerify names do not map back to the node names
`denylisted_nodes` expects (those are the op's output tensor names in the quantized model, e.g.
`model/conv2d/Relu;model/conv2d/BiasAdd;...`), its per-layer metrics see only differences (a
layer whose informative values all round to zero looks as good as one with tiny errors), and its
interpreter runs under XNNPACK, which leaves intermediate tensors unreadable. Here each layer's
error is the noise-to-signal ratio of its quantized output, read through LiteRT without delegates.

int16x8 is not offered: TF 2.21 quantizes int16 activations with the old calibrator, which has no
node denylist, and the MLIR quantizer's int16 models fail to load in LiteRT (non-zero zero
points on CONV_2D outputs).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

VERIFY_OP = b"NumericVerify"
CHUNK = 32  # examples per debug-model invocation


def calibrate(keras_model: Any, calibration: np.ndarray) -> bytes:
    """The float model with recorded activation ranges, ready for `quantize` (int8 input and output)."""
    import tensorflow as tf

    from techniques.conversion import representative

    converter = tf.lite.TFLiteConverter.from_keras_model(keras_model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative(calibration)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    converter.experimental_mlir_quantizer = True
    converter._experimental_calibrate_only = True  # as QuantizationDebugger sets it
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs were expected")
        return converter.convert()


def quantize(calibrated: bytes, float_nodes: Iterable[str] = (), debug: bool = False) -> bytes:
    """The full-integer model (int8 input and output) with `float_nodes` kept float.

    `debug` adds NumericVerify ops after every quantized op (a model for `layer_errors`, not for shipping).
    """
    import tensorflow as tf
    from tensorflow.lite.python import convert

    return convert.mlir_quantize(
        calibrated, fully_quantize=True, input_data_type=tf.int8, output_data_type=tf.int8,
        enable_numeric_verify=debug, denylisted_nodes=sorted(float_nodes) or None,
    )


def graph(flatbuffer: bytes) -> tuple[Any, Any]:
    """(model, first subgraph) of a TFLite flatbuffer, in TensorFlow's object model."""
    from pipeline.private_api import tflite_from_bytes

    model = tflite_from_bytes(flatbuffer)
    return model, model.subgraphs[0]


def tensor_name(subgraph: Any, index: int) -> str:
    """The name of tensor `index`."""
    name = subgraph.tensors[index].name
    return name.decode() if isinstance(name, bytes) else str(name)


def layer_nodes(quantized: bytes, layer_names: LayerNames) -> dict[str, list[str]]:
    """Keras layer -> the nodes (op output tensor names) it became in `quantized`.

    `layer_names` (from `keras_layer_names`) maps the names that appear in tensor names to the
    layer names reported (a QAT wrapper `quant_dense` to `dense`). Ops of no known layer
    (QUANTIZE, DEQUANTIZE, ...) are left out; see `operator_layers` for how ops are matched.
    """
    model, subgraph = graph(quantized)
    found: dict[str, list[str]] = {}
    for op, layer in zip(subgraph.operators, operator_layers(model, subgraph, layer_names, main=True)):
        if layer is not None:
            found.setdefault(layer, []).append(tensor_name(subgraph, int(op.outputs[0])))
    return found


def operator_layers(model: Any, subgraph: Any, layer_names: LayerNames, main: bool) -> list[str | None]:
    """The Keras layer (reported name) each operator of `subgraph` computes, None for ops of no layer.

    Three marks, the first that names a known layer wins:
    1. the op's output tensor: the converter names it after the Keras ops fused into it
       (`model/conv2d/Relu;model/conv2d/BiasAdd;...`);
    2. its constant inputs: weights and biases keep their layer's name (`model/dense_1/MatMul`);
    3. in the `main` subgraph, the op that computes the model's only output is the Keras output
       layer's (`output_layer`).
    The converter renames the output of the op that computes the model's output after the
    output (`StatefulPartitionedCall:0`, or `...:01` when a QUANTIZE after a float op writes it),
    so mark 1 misses the last layer; mark 2 finds it by its weights, and mark 3 also when it has
    none (a softmax, an activation). The converter's own per-op debug metadata
    (`serialize_debug_metadata`) would be more direct, but TF 2.21 drops it from quantized
    models (and ships no Python reader for it); converting again with each layer's output made
    a model output would fuse differently from the file that ships. The file's own tensors and
    the Keras graph are what the fallback and the integer gate both read, so they always agree.
    """
    constant = [
        [tensor_name(subgraph, int(i)) for i in op.inputs if i >= 0 and model.buffers[subgraph.tensors[i].buffer].data is not None]
        for op in subgraph.operators
    ]
    found = [
        next((name for name in (layer_in(n, layer_names) for n in [tensor_name(subgraph, int(op.outputs[0])), *names]) if name), None)
        for op, names in zip(subgraph.operators, constant)
    ]
    last = output_operator(model, subgraph) if main else None
    if last is not None and found[last] is None:
        found[last] = layer_names.output
    return found


def output_operator(model: Any, subgraph: Any) -> int | None:
    """Index of the op that computes the subgraph's only output: the one writing it, or, when a
    QUANTIZE or DEQUANTIZE writes it (around a float op, or converting the output type), the op before."""
    from pipeline.private_api import tflite_operator_names

    if len(subgraph.outputs) != 1:
        return None
    codes = tflite_operator_names()
    writer = {int(i): k for k, op in enumerate(subgraph.operators) for i in op.outputs}
    index = writer.get(int(subgraph.outputs[0]))
    while index is not None and operator_name(model, subgraph.operators[index], codes) in ("QUANTIZE", "DEQUANTIZE"):
        index = writer.get(int(subgraph.operators[index].inputs[0]))
    return index


def operator_name(model: Any, op: Any, codes: Mapping[int, str]) -> str:
    """The builtin name of `op` (`FULLY_CONNECTED`), `CUSTOM` for custom ops; `codes` from `tflite_operator_names`."""
    code = model.operatorCodes[op.opcodeIndex]
    return codes.get(max(code.builtinCode, code.deprecatedBuiltinCode), "CUSTOM")


def layer_in(name: str, layer_names: Mapping[str, str]) -> str | None:
    """The innermost known layer a converter tensor name mentions, or None."""
    for part in name.split(";"):
        known = [layer_names[c] for c in part.split("/") if c in layer_names]
        if known:
            return known[-1]
    return None


class LayerNames(dict[str, str]):
    """Name in converter tensor names -> reported layer name, and `output`: the reported name of the
    layer that computes the model's output (None when that is not known)."""

    output: str | None = None


# Layers that compute nothing at inference: the converter leaves no op for them.
INFERENCE_IDENTITIES = (
    "Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D", "GaussianNoise", "GaussianDropout",
    "AlphaDropout", "ActivityRegularization", "Identity",
)


def keras_layer_names(model: Any) -> LayerNames:
    """Name in converter tensor names -> reported layer name, for every layer (nested ones too), and the output layer."""
    names = LayerNames(tensor_layer_names(model))
    names.output = output_layer(model)
    return names


def tensor_layer_names(model: Any) -> dict[str, str]:
    """Name in converter tensor names -> reported layer name, for every layer (nested ones too)."""
    names: dict[str, str] = {}
    for layer in getattr(model, "layers", []):  # an inference-only SavedModel has none
        if hasattr(layer, "layers"):  # a nested model: its own layers carry the names
            names.update(tensor_layer_names(layer))
            continue
        # TFMOT's QAT wrappers (quant_dense) are reported by the layer they wrap (dense).
        wrapped = type(layer).__name__.startswith("QuantizeWrapper")
        names[layer.name] = layer.layer.name if wrapped else layer.name
    return names


def output_layer(model: Any) -> str | None:
    """The reported name of the layer whose op computes the output of the functional or Sequential
    `model`, reached from the output past layers that convert to nothing (the serving contract's
    linear `logits`, dropout) and into nested models; None for a subclassed model, an
    inference-only SavedModel, or several outputs."""
    import tf_keras as keras

    from pipeline.private_api import is_graph_network, keras_history

    if not is_graph_network(model) or len(model.outputs) != 1:
        return None
    tensor = model.outputs[0]
    while True:
        layer, node_index, tensor_index = keras_history(tensor)
        inner = getattr(layer, "layer", layer)  # a QAT wrapper computes what it wraps
        if is_graph_network(layer):  # a nested model: its own output
            tensor = layer.outputs[tensor_index]
        elif type(inner).__name__ in INFERENCE_IDENTITIES or (
            isinstance(inner, keras.layers.Activation) and inner.activation is keras.activations.linear
        ):
            tensor = layer.inbound_nodes[node_index].input_tensors
        elif isinstance(layer, keras.layers.InputLayer):
            return None
        else:
            return tensor_layer_names(model).get(layer.name)
        if isinstance(tensor, (list, tuple)):
            if len(tensor) != 1:  # an identity of several tensors: no one op computes the output
                return None
            tensor = tensor[0]


def layer_errors(calibrated: bytes, float_nodes: Iterable[str], nodes: Mapping[str, list[str]], x: np.ndarray) -> dict[str, float]:
    """Each still-quantized layer's int8 error on examples `x`: sqrt(sum noise^2 / sum signal^2) of its
    worst op (the noise-to-signal ratio of its quantized output).

    Each op is compared with a float copy fed the same (quantized) input, so the number is the
    layer's own error, not what it inherits. 0 is exact; 1 means the layer's output is lost.
    """
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    from pipeline.measure.litert import quantize_input

    debug = quantize(calibrated, float_nodes, debug=True)
    # Without delegates and with every tensor kept, the compared tensors can be read after invoke.
    runner = Interpreter(
        model_content=debug, experimental_preserve_all_tensors=True,
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
    )
    node_layer = {node: layer for layer, names in nodes.items() for node in names}
    compared = verified(debug, set(node_layer))
    sums = {node: np.zeros(2) for node in compared}  # (noise, signal) sums of squares
    # In chunks: every intermediate tensor of the batch is kept, which a large model would not fit.
    for start in range(0, len(x), CHUNK):
        chunk = x[start : start + CHUNK]
        source = runner.get_input_details()[0]
        runner.resize_tensor_input(source["index"], list(chunk.shape))
        runner.allocate_tensors()
        runner.set_tensor(source["index"], quantize_input(chunk, runner.get_input_details()[0]))
        runner.invoke()
        for node, (quantized, reference, scale, zero_point) in compared.items():
            sums[node] += squares(runner.get_tensor(quantized), runner.get_tensor(reference), scale, zero_point)
    errors: dict[str, float] = {}
    for node, (noise, signal) in sums.items():
        error = float(np.sqrt(noise / signal)) if signal > 0 else (0.0 if noise == 0 else float("inf"))
        errors[node_layer[node]] = max(errors.get(node_layer[node], 0.0), error)
    return errors


def verified(debug: bytes, nodes: set[str]) -> dict[str, tuple[int, int, float, int]]:
    """Node name -> (quantized tensor, float reference tensor, scale, zero point) of each NumericVerify op.

    One of the op's two inputs carries the node's name in the non-debug model (the float copy's
    for inner ops, the quantized one's for the model output), which is how they are matched.
    """
    model, subgraph = graph(debug)
    found = {}
    for op in subgraph.operators:
        if model.operatorCodes[op.opcodeIndex].customCode != VERIFY_OP:
            continue
        quantized, reference = int(op.inputs[0]), int(op.inputs[1])
        name = next((n for n in (tensor_name(subgraph, i) for i in (reference, quantized)) if n in nodes), None)
        if name is not None:
            quantization = subgraph.tensors[quantized].quantization
            found[name] = (quantized, reference, float(quantization.scale[0]), int(quantization.zeroPoint[0]))
    return found


def squares(quantized: np.ndarray, reference: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """(sum of squared quantization errors, sum of squared float values) of one op's output."""
    noise = reference - (quantized.astype(np.float32) - zero_point) * scale
    return np.array([float(np.sum(np.square(noise))), float(np.sum(np.square(reference)))])


def int8_errors(keras_model: Any, calibration: np.ndarray, x: np.ndarray) -> dict[str, float]:
    """Each layer's int8 error on examples `x`, with activation ranges calibrated on `calibration`."""
    calibrated = calibrate(keras_model, calibration)
    nodes = layer_nodes(quantize(calibrated), keras_layer_names(keras_model))
    return layer_errors(calibrated, [], nodes, x)
