"""A precision per layer and int4 weights, through Google's ai-edge-quantizer on the converted float .tflite.

TFLiteConverter writes one precision for the whole model (plus float for denylisted layers in int8
models); ai-edge-quantizer (pinned beside the LiteRT it was built for) rewrites a float .tflite by
rules over op output names: int8 or int16 activations, int8 or int4 weights, float where asked.
Its pitfalls, each handled here:
- its default calibration clips ranges (a moving average of per-sample min/max); the ranges here are
  the global min/max TFLiteConverter uses (`private_api.min_max_ranges`);
- a rule for `*` silently skips ops it cannot do in that precision: every op gets its own rule with
  its own op name, so an unsupported one raises and is named;
- static recipes quantize the model's input and output unless told not to: INPUT and OUTPUT get
  rules of their own, so the file takes and gives what the stage says;
- what it writes is read back (`check_written`): every op of a layer with a rule must hold the
  asked types in the file.
Everything here imports ai-edge-quantizer lazily: only recipes that ask for it pay its import.
"""

from __future__ import annotations

import contextlib
import logging
import re
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from io import StringIO
from typing import Any

import numpy as np

from pipeline.errors import PipelineError

PRECISIONS = ("int8", "int16", "float")
WEIGHTS = ("int8", "int4")
ACTIVATION_BITS = {"int8": 8, "int16": 16}
WEIGHT_BITS = {"int8": 8, "int4": 4}
# TFLite schema TensorType codes -> the names rules use.
TENSOR_TYPES = {0: "float32", 1: "float16", 2: "int32", 3: "uint8", 4: "int64", 7: "int16", 9: "int8", 17: "int4"}
# What an op's output holds under each precision.
OUTPUT_TYPE = {"int8": "int8", "int16": "int16", "float": "float32"}
# Ops whose constant input is a weight matrix, which `weights` sets (the constants of other ops, such
# as a Normalization layer's mean, get the activations' type).
WEIGHT_OPS = frozenset({"CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV", "CONV_3D", "FULLY_CONNECTED", "BATCH_MATMUL", "EMBEDDING_LOOKUP"})
# Ops that only convert between precisions: the quantizer inserts them at every boundary.
CONVERSIONS = ("QUANTIZE", "DEQUANTIZE")


@dataclass(frozen=True)
class Choice:
    """The precision and weight type one layer gets, and the config keys that chose them (errors name them)."""

    precision: str
    weights: str
    precision_key: str
    weights_key: str

    @property
    def words(self) -> str:
        """How the layer plan and tables say it: `int8`, `int4 weights, int8`, `int16x8`, `float32`."""
        if self.precision == "float":
            return "float32"
        activations = "int16x8" if self.precision == "int16" else "int8"
        return f"int4 weights, {activations}" if self.weights == "int4" else activations


def needs_quantizer(precision: Mapping[str, str], weights: str | Mapping[str, str], default: str) -> bool:
    """Whether the rules ask for what TFLiteConverter cannot write: a layer in another precision than
    the model's, or int4 weights anywhere."""
    per_layer = {key: value for key, value in precision.items() if key != "default"}
    weight_rules = {"default": weights} if isinstance(weights, str) else weights
    return bool(per_layer) or precision.get("default", default) != default or "int4" in weight_rules.values()


def layer_types(model: Any) -> dict[str, str]:
    """Reported layer name -> Keras class name, for every layer (nested ones too; a QAT wrapper by what it wraps)."""
    found: dict[str, str] = {}
    for layer in getattr(model, "layers", []):
        if hasattr(layer, "layers"):
            found.update(layer_types(layer))
            continue
        inner = layer.layer if type(layer).__name__.startswith("QuantizeWrapper") else layer
        found[inner.name] = type(inner).__name__
    return found


def resolve(
    model: Any, precision: Mapping[str, str], weights: str | Mapping[str, str], default: str, where: str
) -> tuple[Choice, dict[str, Choice]]:
    """The default Choice (for ops of no layer) and each layer's: a rule naming the layer wins over one
    naming its type (Keras class name, `Dense`), which wins over `default`. A key that names neither
    raises, naming the key."""
    types = layer_types(model)
    weight_rules = {"default": weights} if isinstance(weights, str) else dict(weights)
    for field, rules in (("precision", precision), ("weights", weight_rules)):
        for key in rules:
            if key != "default" and key not in types and key not in types.values():
                known = ", ".join(sorted(types)) + "; types: " + ", ".join(sorted(set(types.values())))
                raise PipelineError(f"{where}.{field}.{key}: no layer or layer type of that name in the model; layers: {known}")
    base = Choice(precision.get("default", default), weight_rules.get("default", "int8"), "precision.default", "weights.default")
    return base, {name: choose(name, kind, precision, weight_rules, base, where) for name, kind in types.items()}


def choose(name: str, kind: str, precision: Mapping[str, str], weights: Mapping[str, str], base: Choice, where: str) -> Choice:
    """Layer `name`'s Choice (see `resolve`)."""
    precision_key = next((k for k in (name, kind) if k in precision), None)
    weights_key = next((k for k in (name, kind) if k in weights), None)
    chosen = Choice(
        precision[precision_key] if precision_key else base.precision,
        weights[weights_key] if weights_key else base.weights,
        f"precision.{precision_key}" if precision_key else base.precision_key,
        f"weights.{weights_key}" if weights_key else base.weights_key,
    )
    if chosen.precision == "float" and weights_key is not None and chosen.weights == "int4":
        raise PipelineError(
            f"{where}.weights.{weights_key}: int4 weights need layer {name} quantized, but {chosen.precision_key} keeps it "
            f"float; drop one of the two"
        )
    return chosen


def quantize(
    float_flatbuffer: bytes, ops: list[tuple[str, str, str | None]], choices: Mapping[str, Choice], default: Choice,
    calibration: np.ndarray, io: str, where: str,
) -> bytes:
    """The float model `float_flatbuffer`, whose `ops` are as `float_ops` lists them, quantized by `choices`
    (layer -> Choice; ops of no known layer get `default`), calibrated on `calibration` with global
    min/max ranges. `io` is the model's input and output type: `int8` or `float32`."""
    from ai_edge_quantizer import quantizer

    from pipeline.private_api import min_max_ranges

    with quiet():
        tool = quantizer.Quantizer(float_flatbuffer)
        for node, operation, layer in ops:
            add_rule(tool, node, operation, layer, choices.get(layer, default) if layer else default, where)
        add_io_rules(tool, io)
        ranges = min_max_ranges(float_flatbuffer, tool.get_quantization_recipe(), signature_samples(float_flatbuffer, calibration))
        return bytes(tool.quantize(ranges, enable_progress_report=False).quantized_model)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Hold back what ai-edge-quantizer prints while it works: a progress bar on stderr, INFO lines (on the
    root logger) about every tensor it rewires, and LiteRT's warning that its calibration keeps every
    tensor (it must). Nothing of the pipeline's own logs in between."""
    disabled = logging.root.manager.disable
    logging.disable(max(disabled, logging.INFO))
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(StringIO()):
            warnings.filterwarnings("ignore", message=".*experimental_preserve_all_tensors")
            yield
    finally:
        logging.disable(disabled)


@dataclass(frozen=True)
class Plan:
    """What the quantizer needs to write a model by rules: the float file, its ops (as `float_ops` lists
    them), the Choice of ops of no layer (`base`) and of each layer, and the input and output type."""

    keras_model: Any
    float_model: bytes
    ops: list[tuple[str, str, str | None]]
    base: Choice
    choices: dict[str, Choice]
    io: str
    calibration: np.ndarray
    where: str

    def write(self, choices: Mapping[str, Choice], base: Choice | None = None) -> bytes:
        """The model quantized by `choices` (ops of no layer by `base`, else the plan's)."""
        return quantize(self.float_model, self.ops, choices, base or self.base, self.calibration, self.io, self.where)

    @property
    def weighted(self) -> set[str]:
        """The layers with a weight matrix (an op of WEIGHT_OPS)."""
        return {layer for _, operation, layer in self.ops if layer is not None and operation in WEIGHT_OPS}

    def reported(self, choices: Mapping[str, Choice]) -> dict[str, Choice]:
        """`choices` of the layers that compute something in the file (dropout and a linear
        activation have no op and no precision to report); a layer without a weight matrix is
        reported with int8 weights, whatever `weights` said (it has none to store in 4 bits)."""
        weighted = self.weighted
        return {
            layer: choices[layer] if layer in weighted else replace(choices[layer], weights="int8")
            for _, _, layer in self.ops if layer is not None and layer in choices
        }


def plan(
    keras_model: Any, mode: str, precision: Mapping[str, str], weights: str | Mapping[str, str], calibration: np.ndarray,
    where: str,
) -> Plan:
    """The Plan for the stage's rules (`precision`, `weights`) over `mode`'s precision (int8 or int16x8,
    which also sets the input and output type)."""
    from techniques.conversion import convert

    base, choices = resolve(keras_model, precision, weights, "int16" if mode == "int16x8" else "int8", where)
    float_model = convert(keras_model, "none", calibration, sparse=False)
    ops = float_ops(float_model, keras_model)
    return Plan(keras_model, float_model, ops, base, choices, "int8" if mode == "int8" else "float32", calibration, where)


def write(
    keras_model: Any, mode: str, precision: Mapping[str, str], weights: str | Mapping[str, str], calibration: np.ndarray,
    where: str,
) -> tuple[bytes, dict[str, Choice]]:
    """The .tflite of `keras_model` by the stage's rules (see `plan`), checked to hold them; and each layer's Choice."""
    rules = plan(keras_model, mode, precision, weights, calibration, where)
    flatbuffer = rules.write(rules.choices)
    check_written(flatbuffer, keras_model, rules.choices, rules.io, where)
    return flatbuffer, rules.reported(rules.choices)


def float_ops(flatbuffer: bytes, keras_model: Any) -> list[tuple[str, str, str | None]]:
    """(output tensor name, op name, Keras layer or None) of every op in the main subgraph."""
    from pipeline.private_api import tflite_operator_names
    from techniques import quant_debug as debug

    model, subgraph = debug.graph(flatbuffer)
    codes = tflite_operator_names()
    layers = debug.operator_layers(model, subgraph, debug.keras_layer_names(keras_model), main=True)
    return [
        (debug.tensor_name(subgraph, int(op.outputs[0])), debug.operator_name(model, op, codes), layer)
        for op, layer in zip(subgraph.operators, layers)
    ]


def add_rule(tool: Any, node: str, operation: str, layer: str | None, choice: Choice, where: str) -> None:
    """One rule for one op (its output's exact name), so an op the quantizer cannot do that way raises."""
    from ai_edge_quantizer import qtyping

    # The quantizer matches rules against the op's output names joined by ";" and ended by ";".
    regex = "^" + re.escape(node) + ";$"
    of = f"layer {layer}" if layer else f"op {node[:60]}"
    key = f"{where}.{choice.precision_key}"
    try:
        name = qtyping.TFLOperationName(operation)
    except ValueError:
        if choice.precision == "float":
            return  # an op it does not know stays as it is: float
        raise PipelineError(f"{key}: ai-edge-quantizer cannot quantize {operation} ({of}); set it float") from None
    if choice.precision == "float":
        tool.update_quantization_recipe(regex=regex, operation_name=name, algorithm_key="no_quantize")
        return
    try:
        tool.add_static_config(
            regex, name, activation_num_bits=ACTIVATION_BITS[choice.precision], weight_num_bits=WEIGHT_BITS[choice.weights]
        )
    except ValueError:
        # Ops it quantizes at all take int8 weights: int4 is what it refuses (DEPTHWISE_CONV_2D, BATCH_MATMUL).
        if choice.weights == "int4":
            key, fix = f"{where}.{choice.weights_key}", "give it int8 weights"
        else:
            fix = "choose another precision for it"
        raise PipelineError(f"{key}: ai-edge-quantizer cannot write {operation} ({of}) as {choice.words}; {fix}") from None


def add_io_rules(tool: Any, io: str) -> None:
    """The model's input and output stay `io` (int8 or float32), whatever precision the layers beside them get."""
    from ai_edge_quantizer import qtyping

    for operation in (qtyping.TFLOperationName.INPUT, qtyping.TFLOperationName.OUTPUT):
        if io == "int8":
            tool.add_static_config(".*", operation, activation_num_bits=8, weight_num_bits=8)
        else:
            tool.update_quantization_recipe(regex=".*", operation_name=operation, algorithm_key="no_quantize")


def signature_samples(flatbuffer: bytes, examples: np.ndarray) -> dict[str, list[dict[str, np.ndarray]]]:
    """`examples` as the quantizer's calibration and validation take them: one at a time, by signature input."""
    from ai_edge_litert.interpreter import Interpreter

    signatures = Interpreter(model_content=flatbuffer).get_signature_list()
    key = next(iter(signatures))
    name = signatures[key]["inputs"][0]
    return {key: [{name: example[np.newaxis].astype(np.float32)} for example in examples]}


def check_written(flatbuffer: bytes, keras_model: Any, choices: Mapping[str, Choice], io: str, where: str) -> None:
    """Every layer's ops hold the types its Choice asked for in the written file, and its input and
    output are `io`; otherwise fail naming the rule that did not take effect."""
    from pipeline.private_api import tflite_operator_names
    from techniques import quant_debug as debug

    model, subgraph = debug.graph(flatbuffer)
    codes = tflite_operator_names()
    layers = debug.operator_layers(model, subgraph, debug.keras_layer_names(keras_model), main=True)
    for op, layer in zip(subgraph.operators, layers):
        operation = debug.operator_name(model, op, codes)
        if layer is None or layer not in choices or operation in CONVERSIONS:
            continue
        problem = op_problem(model, subgraph, op, choices[layer], operation in WEIGHT_OPS)
        if problem:
            choice = choices[layer]
            key = choice.weights_key if problem.startswith("weights") else choice.precision_key
            raise PipelineError(
                f"{where}.{key}: asked {choice.words} for layer {layer}, but its {operation} has {problem} in the written file"
            )
    for kind, indices in (("input", subgraph.inputs), ("output", subgraph.outputs)):
        found = TENSOR_TYPES.get(subgraph.tensors[int(indices[0])].type, "other")
        if found != io:
            raise PipelineError(f"{where}.mode: the model's {kind} should be {io} but the written file has {found}")


def op_problem(model: Any, subgraph: Any, op: Any, choice: Choice, has_weights: bool) -> str | None:
    """What in `op` contradicts `choice` ("activations int8", "weights int8"), or None. The weights are
    checked in ops that have a weight matrix (`has_weights`), and any constant in a float op."""
    output = TENSOR_TYPES.get(subgraph.tensors[int(op.outputs[0])].type, "other")
    if output in OUTPUT_TYPE.values() and output != OUTPUT_TYPE[choice.precision]:
        return f"activations {output}"
    if not has_weights and choice.precision != "float":
        return None
    wanted = "float32" if choice.precision == "float" else choice.weights
    for weight in weight_tensors(model, subgraph, op):
        found = TENSOR_TYPES.get(weight.type, "other")
        if found != wanted:
            return f"weights {found}"
    return None


def weight_tensors(model: Any, subgraph: Any, op: Any) -> list[Any]:
    """The op's constant inputs of two or more dimensions: its weights (biases and shapes are 1-D)."""
    found = []
    for index in op.inputs:
        if index < 0:
            continue
        tensor = subgraph.tensors[int(index)]
        if model.buffers[tensor.buffer].data is not None and len(tensor.shape) >= 2:
            found.append(tensor)
    return found
