"""Checks that stop a run whose converted model would ship worse than promised."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from pipeline.errors import PipelineError
from pipeline.fields import Switch
from pipeline.schema import Params

# TFLite schema TensorType ids of floating-point tensors.
FLOAT_TYPES = {0: "float32", 1: "float16", 10: "float64"}


class GateParams(Params):
    """Checks on the converted model; mixed into the parameters of stages that write TFLite."""

    accuracy_tolerance: float | None = Field(
        None, ge=-1, le=1,
        description="Fail when TFLite test accuracy is more than this below the Keras model's (0.01 = 1 point); unset: no check.",
    )
    require_integer: Switch = Field(
        "auto", description="Fail unless every op is integer with int8 input and output; auto: for int8 output."
    )


@dataclass(frozen=True)
class GateResult:
    """What the gates found: facts for the artifact's metadata, and the accuracies they compared."""

    facts: dict[str, Any] = field(default_factory=dict)
    accuracies: dict[str, float] = field(default_factory=dict)


def apply_gates(params: GateParams, int8: bool, keras_model: Any, path: Path, data: Any, where: str) -> GateResult:
    """Run the gates `params` asks for on the TFLite file at `path`."""
    result = GateResult()
    if params.require_integer == "true" or (params.require_integer == "auto" and int8):
        integer_gate(path, where, keras_model)
        result.facts["fully_integer"] = True
    elif int8:  # shipped with float layers on purpose: say which
        result.facts["float_layers"] = list(float_layers(path, keras_model))
    if params.accuracy_tolerance is not None:
        result.accuracies.update(accuracy_gate(keras_model, path, data, params.accuracy_tolerance, where))
    return result


def accuracy_gate(keras_model: Any, tflite_path: Path, data: Any, tolerance: float, where: str) -> dict[str, float]:
    """Test accuracy of both models; PipelineError if TFLite falls more than `tolerance` below Keras."""
    from pipeline import litert

    keras_logits = keras_model.predict(data.x_test, batch_size=256, verbose=0)
    keras_accuracy = float(np.mean(np.argmax(keras_logits, axis=-1) == data.y_test))
    tflite_accuracy = float(np.mean(np.argmax(litert.predict(tflite_path, data.x_test), axis=-1) == data.y_test))
    if tflite_accuracy < keras_accuracy - tolerance:
        raise PipelineError(
            f"{where}.accuracy_tolerance: TFLite accuracy {tflite_accuracy:.4f} is {keras_accuracy - tflite_accuracy:.4f} "
            f"below the Keras model's {keras_accuracy:.4f}, more than the allowed {tolerance}; "
            f"use quantization-aware training (a qat stage) or raise {where}.accuracy_tolerance"
        )
    return {"keras_accuracy": keras_accuracy, "tflite_accuracy": tflite_accuracy, "tolerance": tolerance}


def float_operators(path: Path) -> list[str]:
    """Names of operators that read or write a floating-point tensor."""
    return [name for name, _ in float_ops(path)]


def float_ops(path: Path) -> list[tuple[str, list[str]]]:
    """Each operator that reads or writes a floating-point tensor: its name and its output tensors' names."""
    from pipeline.private_api import read_tflite, tflite_operator_names

    names = tflite_operator_names()
    model = read_tflite(str(path))
    found = []
    for subgraph in model.subgraphs:
        for op in subgraph.operators:
            outputs = [i for i in (op.outputs if op.outputs is not None else []) if i >= 0]
            tensors = [i for i in [*(op.inputs if op.inputs is not None else []), *outputs] if i >= 0]
            if any(subgraph.tensors[i].type in FLOAT_TYPES for i in tensors):
                code = model.operatorCodes[op.opcodeIndex]
                op_name = names.get(max(code.builtinCode, code.deprecatedBuiltinCode), "CUSTOM")
                found.append((op_name, [_text(subgraph.tensors[i].name) for i in outputs]))
    return found


def _text(name: bytes | str | None) -> str:
    return name.decode() if isinstance(name, bytes) else name or ""


def float_layers(path: Path, keras_model: Any) -> dict[str, list[str]]:
    """The Keras layers (`name (Type)`) whose TFLite operators compute in float, with those operators.

    The converter names each tensor after the layer that made it (`model/norm/add`); the
    QUANTIZE and DEQUANTIZE operators around a float layer are its boundary, not the layer.
    Layers of nested models count (a serving model wraps the trained one); an inference-only
    SavedModel has no layers, and its float operators are all `other`.
    """
    known = {layer.name: f"{layer.name} ({type(layer).__name__})" for layer in leaf_layers(keras_model)}
    found: dict[str, list[str]] = {}
    for op, outputs in float_ops(path):
        if op in ("QUANTIZE", "DEQUANTIZE"):
            continue
        parts = [part for name in outputs for piece in name.split(";") for part in piece.split("/")]
        ops = found.setdefault(next((known[part] for part in parts if part in known), "other"), [])
        if op not in ops:
            ops.append(op)
    return found


def leaf_layers(model: Any) -> list[Any]:
    """The layers of `model` that are not models themselves, also inside nested models."""
    import tf_keras as keras

    found = []
    for layer in getattr(model, "layers", []):
        found += leaf_layers(layer) if isinstance(layer, keras.Model) else [layer]
    return found


def integer_gate(path: Path, where: str, keras_model: Any = None) -> None:
    """PipelineError unless every operator is integer and the input and output are int8.

    Given the Keras model the file was converted from, the error names the layers left in float.
    """
    from pipeline import litert

    runner = litert.interpreter(path, threads=1)
    io = {"input": runner.get_input_details()[0]["dtype"], "output": runner.get_output_details()[0]["dtype"]}
    wrong = [f"{side} is {np.dtype(dtype).name}" for side, dtype in io.items() if dtype != np.int8]
    layers = float_layers(path, keras_model) if keras_model is not None else {}
    if layers and not wrong:
        listed = ", ".join(f"{layer}: {' '.join(ops)}" for layer, ops in layers.items())
        raise PipelineError(
            f"{where}.require_integer: layers the int8 kernels cannot run stay float: {listed}; set "
            f"{where}.require_integer=false to ship them as float layers, or replace them with layers that have int8 kernels"
        )
    floats = float_operators(path)
    if floats:
        wrong.append(f"float operators {', '.join(sorted(set(floats)))}")
    if wrong:
        raise PipelineError(
            f"{where}.require_integer: the TFLite model is not fully integer ({'; '.join(wrong)}); "
            f"use mode=int8 with layers the int8 kernels support, or set {where}.require_integer=false"
        )
