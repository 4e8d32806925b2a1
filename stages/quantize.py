"""quantize: convert a Keras model to TFLite, with post-training quantization."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from pipeline.artifact import ModelArtifact, ModelFormat
from pipeline.schema import Params
from pipeline.stage import Stage, StageContext

# Modes that calibrate activation ranges on a representative dataset.
CALIBRATED = {"int8", "int16x8"}


class QuantizeParams(Params):
    """Parameters of the quantize stage."""

    mode: Literal["none", "dynamic", "float16", "int8", "int16x8"] = Field(
        "int8",
        description=(
            "none: float32 TFLite; dynamic: int8 weights, float activations; float16: float16 weights; "
            "int8: full integer with int8 input and output; int16x8: int16 activations, int8 weights."
        ),
    )
    calibration_samples: int = Field(
        200, ge=1, le=100_000, description="Training examples used to calibrate int8/int16x8 ranges."
    )


class QuantizeStage(Stage):
    """Keras model -> .tflite via tf.lite.TFLiteConverter."""

    Config: ClassVar = QuantizeParams
    produces: ClassVar = ModelFormat.TFLITE

    def run(self, model: ModelArtifact | None, ctx: StageContext) -> ModelArtifact:
        assert model is not None  # guaranteed by `accepts`
        params: QuantizeParams = self.config
        converter = configure_converter(model.load_keras(), params, calibration_set(ctx, params))
        path = ctx.workdir / "model.tflite"
        with warnings.catch_warnings():
            # Emitted for every calibrated conversion from Keras; it asks for nothing we can supply.
            warnings.filterwarnings("ignore", message="Statistics for quantized inputs were expected")
            path.write_bytes(converter.convert())
        return ModelArtifact(path, ModelFormat.TFLITE, ctx.name, model, {"quantization": params.mode})


def calibration_set(ctx: StageContext, params: QuantizeParams) -> np.ndarray:
    """A seeded random sample of the training split (never the test split)."""
    rng = np.random.default_rng(ctx.seed)
    count = min(params.calibration_samples, len(ctx.data.x_train))
    return ctx.data.x_train[rng.choice(len(ctx.data.x_train), size=count, replace=False)]


def configure_converter(keras_model: Any, params: QuantizeParams, calibration: np.ndarray) -> Any:
    """A TFLiteConverter set up for `params.mode`."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(keras_model)
    if params.mode == "none":
        return converter
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if params.mode == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if params.mode in CALIBRATED:

        def representative() -> Iterator[list[np.ndarray]]:
            for example in calibration:
                yield [example[np.newaxis].astype(np.float32)]

        converter.representative_dataset = representative
    if params.mode == "int8":
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    if params.mode == "int16x8":
        converter.target_spec.supported_ops = [
            tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8
        ]
    return converter
