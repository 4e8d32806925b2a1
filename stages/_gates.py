"""Checks that stop a run whose converted model would ship worse than promised."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from pipeline.errors import PipelineError
from pipeline.schema import Params

# TFLite schema TensorType ids of floating-point tensors.
FLOAT_TYPES = {0: "float32", 1: "float16", 10: "float64"}


class GateParams(Params):
    """Checks on the converted model; mixed into the parameters of stages that write TFLite."""

    accuracy_tolerance: float | None = Field(
        None, ge=-1, le=1,
        description="Fail when TFLite test accuracy is more than this below the Keras model's (0.01 = 1 point); unset: no check.",
    )
    require_integer: Literal["auto", "true", "false"] = Field(
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
        integer_gate(path, where)
        result.facts["fully_integer"] = True
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
    from pipeline.private_api import read_tflite, tflite_operator_names

    names = tflite_operator_names()
    model = read_tflite(str(path))
    found = []
    for subgraph in model.subgraphs:
        for op in subgraph.operators:
            ends = [*(op.inputs if op.inputs is not None else []), *(op.outputs if op.outputs is not None else [])]
            tensors = [i for i in ends if i >= 0]
            if any(subgraph.tensors[i].type in FLOAT_TYPES for i in tensors):
                code = model.operatorCodes[op.opcodeIndex]
                found.append(names.get(max(code.builtinCode, code.deprecatedBuiltinCode), "CUSTOM"))
    return found


def integer_gate(path: Path, where: str) -> None:
    """PipelineError unless every operator is integer and the input and output are int8."""
    from pipeline import litert

    runner = litert.interpreter(path, threads=1)
    io = {"input": runner.get_input_details()[0]["dtype"], "output": runner.get_output_details()[0]["dtype"]}
    wrong = [f"{side} is {np.dtype(dtype).name}" for side, dtype in io.items() if dtype != np.int8]
    floats = float_operators(path)
    if floats:
        wrong.append(f"float operators {', '.join(sorted(set(floats)))}")
    if wrong:
        raise PipelineError(
            f"{where}.require_integer: the TFLite model is not fully integer ({'; '.join(wrong)}); "
            f"use mode=int8 with layers the int8 kernels support, or set {where}.require_integer=false"
        )
