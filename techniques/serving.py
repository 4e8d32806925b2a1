"""The serving contract of a shipped model: what it takes, what it gives, under which names.

By default the data's preprocessing steps are folded into the model as built-in Keras layers
before conversion, so the model takes raw inputs (pixel values, unscaled features) and int8
calibration sees what a device feeds. The model's input is named `features` and its output
`logits` (or `probabilities` behind a softmax), which names the serving signature of TFLite and
SavedModel files.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from pydantic import Field

from pipeline.data import Dataset, Preprocessing
from pipeline.measure.tasks import served_outputs
from pipeline.plugin.schema import Params

INPUT_NAME = "features"
SIGNATURE = "serving_default"
INPUTS_HELP = (
    "raw: the data's preprocessing steps are folded into the model, which takes raw inputs (pixel values, "
    "unscaled features); preprocessed: the model takes inputs after those steps, as in training; auto: raw, "
    "except for integer models (int8, int16x8) whose steps hold per-feature statistics, since one integer "
    "input scale cannot carry features of different ranges."
)
OUTPUTS_HELP = (
    "logits, or probabilities (a softmax added as the last layer; a sigmoid per label for task=multilabel). "
    "task=regression always gives values in the labels' own unit (the target scaling undone in the model)."
)


class ServingParams(Params):
    """What the converted model takes and gives; mixed into the stages that write TFLite."""

    inputs: Literal["auto", "raw", "preprocessed"] = Field("auto", description=INPUTS_HELP)
    outputs: Literal["logits", "probabilities"] = Field("logits", description=OUTPUTS_HELP)


def choose_inputs(choice: str, preprocessing: Preprocessing, integer: bool) -> tuple[str, str]:
    """The input contract for `choice` ("auto", "raw" or "preprocessed") and why, for the log."""
    steps = ", ".join(step.op for step in preprocessing.steps)
    if not preprocessing.steps:
        return "raw", "the data has no preprocessing steps"
    if choice == "auto" and integer and preprocessing.per_feature:
        return "preprocessed", (
            f"steps ({steps}) kept outside: per-feature statistics cannot share the integer input's one scale; "
            "apply them before the model (see the JSON), or set inputs=raw"
        )
    if choice == "preprocessed":
        return "preprocessed", f"steps ({steps}) to apply before the model (see the JSON)"
    return "raw", f"steps ({steps}) folded into the model"


def serving_model(
    keras_model: Any, preprocessing: Preprocessing, inputs: str, outputs: str, target_scale: tuple[float, float] | None = None,
    task: str = "classification",
) -> Any:
    """`keras_model` behind the preprocessing layers (raw inputs) and before a softmax (probabilities; a
    sigmoid for multi-label) or the undoing of the target scaling (values, in the labels' unit, from
    `target_scale`'s mean and deviation), with its input named `features` and its output named as `outputs`."""
    import tf_keras as keras

    # The trained model's input type is kept: token ids stay int32 (a float input cast to ids would
    # have the int8 converter quantize the ids themselves).
    features = keras.Input(keras_model.input_shape[1:], dtype=keras_model.inputs[0].dtype, name=INPUT_NAME)
    x = features
    if inputs == "raw":
        for layer in preprocessing.layers():
            x = layer(x)
    y = keras_model(x)
    return keras.Model(features, head(outputs, target_scale, task)(y), name=keras_model.name)


def head(outputs: str, target_scale: tuple[float, float] | None, task: str) -> Any:
    """The last layer of a served model, named as its output."""
    import tf_keras as keras

    if outputs == "values":  # standardised outputs back in the labels' unit: calibrated and quantized there
        mean, std = target_scale or (0.0, 1.0)
        return keras.layers.Rescaling(std, offset=mean, name=outputs)
    if outputs == "probabilities":
        return keras.layers.Activation("sigmoid", name=outputs) if task == "multilabel" else keras.layers.Softmax(name=outputs)
    # A linear activation is an identity that TFLite drops; it is here to name the output.
    return keras.layers.Activation("linear", name=outputs)


def for_serving(
    keras_model: Any, data: Dataset, params: ServingParams, integer: bool, log: logging.Logger
) -> tuple[Any, Dataset, dict[str, str]]:
    """The model as it will be converted, the data as it sees them, and its contract facts.

    For raw inputs the data are the raw view: calibration and gates see raw inputs.
    """
    inputs, why = choose_inputs(params.inputs, data.preprocessing, integer)
    outputs = served_outputs(params.outputs, data.task)
    log.info("    inputs: %s (%s); outputs: %s", inputs, why, outputs)
    model = serving_model(keras_model, data.preprocessing, inputs, outputs, data.target_scale, data.task)
    served: Dataset = data.raw() if inputs == "raw" else data
    return model, served, contract(inputs, outputs)


def contract(inputs: str, outputs: str) -> dict[str, str]:
    """The contract facts an artifact's metadata carries (the runner measures raw-input models on raw inputs)."""
    return {"inputs": inputs, "outputs": outputs, "signature": SIGNATURE, "input": INPUT_NAME, "output": outputs}
