"""Checks that stop a run whose converted model would ship worse than promised."""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from pipeline.errors import PipelineError
from pipeline.measure.tasks import served_outputs
from pipeline.plugin.fields import Switch
from pipeline.plugin.schema import Params

# TFLite schema TensorType ids of floating-point tensors.
FLOAT_TYPES = {0: "float32", 1: "float16", 10: "float64"}


class GateParams(Params):
    """Checks on the converted model; mixed into the parameters of stages that write TFLite."""

    accuracy_tolerance: float | None = Field(
        None, ge=-1, le=1,
        description=(
            "Fail when TFLite validation accuracy is more than this below the Keras model's (0.01 = 1 point); "
            "unset: no check."
        ),
    )
    require_integer: Switch = Field(
        "auto",
        description=(
            "Fail unless every op is integer with int8 input (or int32 token ids) and int8 output; auto: for "
            "int8 output, accepting layers the accuracy fallback kept float."
        ),
    )

    def check_settings(self, settings: Any, where: str) -> None:
        """The accuracy gate compares validation accuracies, so it needs a validation split."""
        if self.accuracy_tolerance is not None and settings.data.get("val_fraction") == 0:
            raise PipelineError(
                f"{where}.accuracy_tolerance: the gate compares validation accuracies, but data.val_fraction=0 "
                f"leaves no validation split; set data.val_fraction (e.g. 0.1) or remove the tolerance"
            )


@dataclass(frozen=True)
class GateResult:
    """What the gates found: facts for the artifact's metadata, and the accuracies they compared."""

    facts: dict[str, Any] = field(default_factory=dict)
    accuracies: dict[str, float] = field(default_factory=dict)


def apply_gates(
    params: GateParams, int8: bool, keras_model: Any, path: Path, data: Any, where: str,
    kept_float: Sequence[str] = (), log: logging.Logger | None = None, measured: Mapping[str, float] | None = None,
    remedies: Sequence[str] = (), asked_float: Sequence[str] = (),
) -> GateResult:
    """Run the gates `params` asks for on the TFLite file at `path`.

    `kept_float` are layers the accuracy fallback kept float on purpose: `require_integer=auto`
    accepts them (and says so), `true` fails naming them. `asked_float` are layers the stage's
    `precision` asks float (its schema already refuses them with `require_integer=true`). For int8 output the facts name the
    layers the file runs in float (`float_layers`, read from the file). `measured` are validation
    accuracies the fallback already took (`keras_accuracy`, `tflite_accuracy`), not measured again.
    `remedies` are what the stage can still be told to do when the accuracy gate fails (see `accuracy_gate`).
    """
    result = GateResult()
    if params.require_integer == "true" or (params.require_integer == "auto" and int8):
        if kept_float and params.require_integer == "true":
            raise PipelineError(
                f"{where}.require_integer: layers {', '.join(kept_float)} stay float by the accuracy budget's choice "
                f"(fallback=auto: fully integer missed the budget); set {where}.require_integer=auto to accept them, "
                f"or give more budget (budget.accuracy_drop, {where}.accuracy_tolerance)"
            )
        integer_gate(path, where, keras_model, [*kept_float, *asked_float])
        result.facts["fully_integer"] = not kept_float and not asked_float
        if kept_float and log is not None:
            log.info(
                "    %s.require_integer: int8 input and output; layers %s stay float by the accuracy budget's choice",
                where, ", ".join(kept_float),
            )
        if asked_float and log is not None:
            log.info("    %s.require_integer: int8 input and output; layers %s stay float as %s.precision asks",
                     where, ", ".join(asked_float), where)
        result.facts["float_layers"] = list(float_layers(path, keras_model)) if kept_float or asked_float else []
    elif int8:  # shipped with float layers on purpose: say which
        result.facts["float_layers"] = list(float_layers(path, keras_model))
    if params.accuracy_tolerance is not None:
        given = served_outputs(getattr(params, "outputs", "logits"), data.task)  # what both models give
        result.accuracies.update(
            accuracy_gate(keras_model, path, data, params.accuracy_tolerance, where, measured, remedies, given)
        )
        result.facts["gate_split"] = "validation"
    return result


def accuracy_gate(
    keras_model: Any, tflite_path: Path, data: Any, tolerance: float, where: str, measured: Mapping[str, float] | None = None,
    remedies: Sequence[str] = (), given: str = "logits",
) -> dict[str, float]:
    """Validation score of both models (the task's primary metric; those in `measured` as given);
    PipelineError if TFLite falls more than `tolerance` below Keras (points, or for MAE a relative
    increase). `given` names what both models output (logits, probabilities or values).

    The error offers the stage's `remedies` (each a fix the stage has not already taken: a qat
    stage is not told to use quantization-aware training), then raising the tolerance.

    A gate decides whether the run ships, so it looks at the validation split: the test split is
    measured once on what ships and never steers a decision.
    """
    from pipeline.measure.metrics import keras_score, tflite_score
    from pipeline.measure.tasks import task_named

    if not len(data.x_val):
        raise PipelineError(
            f"{where}.accuracy_tolerance: the validation split is empty; set data.val_fraction (e.g. 0.1)"
        )
    measured = measured or {}
    keras_accuracy = measured.get("keras_accuracy")
    if keras_accuracy is None:
        keras_accuracy = keras_score(keras_model, data, given)
    converted = measured.get("tflite_accuracy")
    if converted is None:
        converted = tflite_score(tflite_path, data, given)
    task = task_named(data.task)
    if not task.meets(converted, task.limit(keras_accuracy, tolerance), 0.0):
        lost = task.describe(task.drop(keras_accuracy, converted)) if task.relative else f"{keras_accuracy - converted:.4f}"
        allowed = task.describe(tolerance) if task.relative else f"{tolerance}"
        raise PipelineError(
            f"{where}.accuracy_tolerance: TFLite validation {task.title} {converted:.4f} is {lost} "
            f"{task.worse_word} the Keras model's {keras_accuracy:.4f}, more than the allowed {allowed}; "
            f"{one_of([*remedies, f'raise {where}.accuracy_tolerance'])}"
        )
    return {"keras_accuracy": keras_accuracy, "tflite_accuracy": converted, "tolerance": tolerance}


def one_of(choices: Sequence[str]) -> str:
    """`a`, `a or b`, `a, b or c`."""
    return " or ".join([", ".join(choices[:-1]), choices[-1]] if len(choices) > 1 else choices)


def float_operators(path: Path) -> list[str]:
    """Names of operators that read or write a floating-point tensor."""
    return [name for name, _ in float_ops(path)]


def float_ops(path: Path, keras_model: Any = None) -> list[tuple[str, str | None]]:
    """Each operator that reads or writes a floating-point tensor: its name and, given the Keras
    model the file was converted from, the layer it computes (None for ops of no known layer)."""
    from pipeline.private_api import read_tflite, tflite_operator_names
    from techniques.quant_debug import LayerNames, keras_layer_names, operator_layers, operator_name

    codes = tflite_operator_names()
    names = keras_layer_names(keras_model) if keras_model is not None else LayerNames()
    model = read_tflite(str(path))
    found = []
    for index, subgraph in enumerate(model.subgraphs):
        layers = operator_layers(model, subgraph, names, main=index == 0)
        for op, layer in zip(subgraph.operators, layers):
            outputs = [i for i in (op.outputs if op.outputs is not None else []) if i >= 0]
            tensors = [i for i in [*(op.inputs if op.inputs is not None else []), *outputs] if i >= 0]
            if any(subgraph.tensors[i].type in FLOAT_TYPES for i in tensors):
                found.append((operator_name(model, op, codes), layer))
    return found


def float_layers(path: Path, keras_model: Any, kept_float: Collection[str] = ()) -> dict[str, list[str]]:
    """The Keras layers (`name (Type)`) whose TFLite operators compute in float, with those operators
    (but those of `kept_float`, layers kept float on purpose).

    Operators are matched to layers as the fallback matches them (`_quant_debug.operator_layers`),
    the last layer's too; the QUANTIZE and DEQUANTIZE operators around a float layer are its
    boundary, not the layer. Layers of nested models count (a serving model wraps the trained
    one), and a layer wrapped for quantization-aware training is named as the layer it wraps; an
    inference-only SavedModel has no layers, and its float operators are all `other`.
    """
    # A wrapper (QAT's) names the tensors; the layer it wraps is the one the user knows.
    known = {inner.name: inner for inner in (getattr(layer, "layer", layer) for layer in leaf_layers(keras_model))}
    found: dict[str, list[str]] = {}
    for op, name in float_ops(path, keras_model):
        if op in ("QUANTIZE", "DEQUANTIZE") or name in kept_float:
            continue
        layer = known.get(name) if name is not None else None
        ops = found.setdefault(f"{layer.name} ({type(layer).__name__})" if layer is not None else "other", [])
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


def integer_io(side: str, detail: dict) -> bool:
    """An integer model's input or output: int8, or for the input integer ids that are not quantized
    (token ids, int32, which an embedding looks up: they are indices, not values to scale)."""
    if detail["dtype"] == np.int8:
        return True
    return side == "input" and np.issubdtype(detail["dtype"], np.integer) and detail["quantization"][0] == 0


def integer_gate(path: Path, where: str, keras_model: Any = None, kept_float: Collection[str] = ()) -> None:
    """PipelineError unless every operator is integer, the output int8 and the input int8 (or integer ids).

    Given the Keras model the file was converted from, the error names the layers left in float;
    the operators of `kept_float` (layers the accuracy fallback kept float on purpose) are accepted.
    """
    from pipeline.measure import litert

    runner = litert.interpreter(path, threads=1)
    io = {"input": runner.get_input_details()[0], "output": runner.get_output_details()[0]}
    wrong = [f"{side} is {np.dtype(detail['dtype']).name}" for side, detail in io.items() if not integer_io(side, detail)]
    layers = float_layers(path, keras_model, kept_float) if keras_model is not None else {}
    if layers and not wrong:
        listed = ", ".join(f"{layer}: {' '.join(ops)}" for layer, ops in layers.items())
        raise PipelineError(
            f"{where}.require_integer: layers the int8 kernels cannot run stay float: {listed}; set "
            f"{where}.require_integer=false to ship them as float layers, or replace them with layers that have int8 kernels"
        )
    # Layers the fallback kept float bring their own float operators; only the others count.
    floats = [op for ops in layers.values() for op in ops] if kept_float else float_operators(path)
    if floats:
        wrong.append(f"float operators {', '.join(sorted(set(floats)))}")
    if wrong:
        raise PipelineError(
            f"{where}.require_integer: the TFLite model is not fully integer ({'; '.join(wrong)}); "
            f"use mode=int8 with layers the int8 kernels support, or set {where}.require_integer=false"
        )
