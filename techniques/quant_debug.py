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
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np

VERIFY_OP = b"NumericVerify"
CHUNK = 32  # examples per debug-model invocation


def calibrate(keras_model: Any, calibration: np.ndarray) -> bytes:
    """The float model with recorded activation ranges, ready for `quantize` (int8 input and output)."""
    import tensorflow as tf

    def representative() -> Iterator[list[np.ndarray]]:
        for example in calibration:
            yield [example[np.newaxis].astype(np.float32)]

    converter = tf.lite.TFLiteConverter.from_keras_model(keras_model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
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


def layer_nodes(quantized: bytes, layer_names: Mapping[str, str]) -> dict[str, list[str]]:
    """Keras layer -> the nodes (op output tensor names) it became in `quantized`.

    The converter names an op's output after the Keras ops fused into it
    (`model/conv2d/Relu;model/conv2d/BiasAdd;...`) and its weights after their layer
    (`model/dense_1/MatMul`); the model's last op is renamed to the output
    (`StatefulPartitionedCall:0`) and is known by its weights. `layer_names` maps the names that
    appear in tensor names to the layer names reported (a QAT wrapper `quant_dense` to `dense`).
    Ops of no known layer (QUANTIZE, DEQUANTIZE, ...) are left out.
    """
    model, subgraph = graph(quantized)
    found: dict[str, list[str]] = {}
    for op in subgraph.operators:
        output = tensor_name(subgraph, int(op.outputs[0]))
        constants = [
            tensor_name(subgraph, int(i)) for i in op.inputs if i >= 0 and model.buffers[subgraph.tensors[i].buffer].data is not None
        ]
        layer = next((name for name in (layer_in(n, layer_names) for n in [output, *constants]) if name), None)
        if layer is not None:
            found.setdefault(layer, []).append(output)
    return found


def layer_in(name: str, layer_names: Mapping[str, str]) -> str | None:
    """The innermost known layer a converter tensor name mentions, or None."""
    for part in name.split(";"):
        known = [layer_names[c] for c in part.split("/") if c in layer_names]
        if known:
            return known[-1]
    return None


def keras_layer_names(model: Any) -> dict[str, str]:
    """Name in converter tensor names -> reported layer name, for every layer (nested ones too)."""
    names: dict[str, str] = {}
    for layer in model.layers:
        if hasattr(layer, "layers"):  # a nested model: its own layers carry the names
            names.update(keras_layer_names(layer))
            continue
        # TFMOT's QAT wrappers (quant_dense) are reported by the layer they wrap (dense).
        wrapped = type(layer).__name__.startswith("QuantizeWrapper")
        names[layer.name] = layer.layer.name if wrapped else layer.name
    return names


def layer_errors(calibrated: bytes, float_nodes: Iterable[str], nodes: Mapping[str, list[str]], x: np.ndarray) -> dict[str, float]:
    """Each still-quantized layer's int8 error on examples `x`: sqrt(sum noise^2 / sum signal^2) of its
    worst op (the noise-to-signal ratio of its quantized output).

    Each op is compared with a float copy fed the same (quantized) input, so the number is the
    layer's own error, not what it inherits. 0 is exact; 1 means the layer's output is lost.
    """
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    from pipeline.litert import quantize_input

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
