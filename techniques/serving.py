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
from pipeline.plugin.schema import Params

INPUT_NAME = "features"
SIGNATURE = "serving_default"
INPUTS_HELP = (
    "raw: the data's preprocessing steps are folded into the model, which takes raw inputs (pixel values, "
    "unscaled features); preprocessed: the model takes inputs after those steps, as in training; auto: raw, "
    "except for integer models (int8, int16x8) whose steps hold per-feature statistics, since one integer "
    "input scale cannot carry features of different ranges."
)
OUTPUTS_HELP = "logits, or probabilities (a softmax added as the last layer)."


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


def serving_model(keras_model: Any, preprocessing: Preprocessing, inputs: str, outputs: str) -> Any:
    """`keras_model` behind the preprocessing layers (raw inputs) and before a softmax (probabilities),
    with its input named `features` and its output `logits` or `probabilities`."""
    import tf_keras as keras

    # The trained model's input type is kept: token ids stay int32 (a float input cast to ids would
    # have the int8 converter quantize the ids themselves).
    features = keras.Input(keras_model.input_shape[1:], dtype=keras_model.inputs[0].dtype, name=INPUT_NAME)
    x = features
    if inputs == "raw":
        for layer in preprocessing.layers():
            x = layer(x)
    y = keras_model(x)
    # A linear activation is an identity that TFLite drops; it is here to name the output.
    y = keras.layers.Softmax(name=outputs)(y) if outputs == "probabilities" else keras.layers.Activation("linear", name=outputs)(y)
    return keras.Model(features, y, name=keras_model.name)


def for_serving(
    keras_model: Any, data: Dataset, params: ServingParams, integer: bool, log: logging.Logger
) -> tuple[Any, Dataset, dict[str, str]]:
    """The model as it will be converted, the data as it sees them, and its contract facts.

    For raw inputs the data are the raw view: calibration and gates see raw inputs.
    """
    inputs, why = choose_inputs(params.inputs, data.preprocessing, integer)
    log.info("    inputs: %s (%s); outputs: %s", inputs, why, params.outputs)
    model = serving_model(keras_model, data.preprocessing, inputs, params.outputs)
    served: Dataset = data.raw() if inputs == "raw" else data
    return model, served, contract(inputs, params.outputs)


def contract(inputs: str, outputs: str) -> dict[str, str]:
    """The contract facts an artifact's metadata carries (the runner measures raw-input models on raw inputs)."""
    return {"inputs": inputs, "outputs": outputs, "signature": SIGNATURE, "input": INPUT_NAME, "output": outputs}
