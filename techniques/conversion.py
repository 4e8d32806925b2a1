"""TFLite conversion: calibration data, the converter set up for each quantization mode, and sparse encoding."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import PipelineError

# Modes that calibrate activation ranges on a representative dataset.
CALIBRATED = {"int8", "int16x8"}
# Modes whose weights stay floating point.
FLOAT_MODES = {"none", "float16"}
# Training examples that calibrate int8/int16x8 ranges, unless a stage is told otherwise.
CALIBRATION_SAMPLES = 200


def calibration_set(x_train: np.ndarray, count: int, seed: int) -> np.ndarray:
    """A seeded random sample of `count` training examples (never the test split)."""
    rng = np.random.default_rng(seed)
    count = min(count, len(x_train))
    return x_train[rng.choice(len(x_train), size=count, replace=False)]


def representative(calibration: np.ndarray) -> Any:
    """The converter's representative dataset: one example at a time, as the model takes it.

    Float inputs go in as float32; integer inputs (token ids) keep their integer type, so the
    converter keeps an integer input instead of quantizing the ids as if they were values.
    """

    def examples() -> Iterator[list[np.ndarray]]:
        for example in calibration:
            yield [example[np.newaxis] if example.dtype.kind in "iu" else example[np.newaxis].astype(np.float32)]

    return examples


def convert(keras_model: Any, mode: str, calibration: np.ndarray, sparse: bool) -> bytes:
    """The TFLite flatbuffer for quantization `mode`."""
    converter = configure_converter(keras_model, mode, calibration)
    if sparse:
        import tensorflow as tf

        converter.optimizations = [*converter.optimizations, tf.lite.Optimize.EXPERIMENTAL_SPARSITY]
    with warnings.catch_warnings():
        # Emitted for every calibrated conversion from Keras; it asks for nothing we can supply.
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs were expected")
        return converter.convert()


def convert_saved(signature_model: Any, mode: str, calibration: np.ndarray, where: str) -> bytes:
    """`convert` for an inference-only SavedModel, whose graph may hold what the converter cannot take.

    A Keras model is made of layers the converter knows; a SavedModel is whatever was traced
    (custom ops, variables updated at inference), and the converter fails deep inside on those.
    """
    try:
        return convert(signature_model, mode, calibration, sparse=False)
    except Exception as error:  # noqa: BLE001 - the converter raises RuntimeError, ConverterError, ValueError
        reason = " ".join(str(error).split())[-200:]
        raise PipelineError(
            f"{where}: the TFLite converter cannot convert the SavedModel {signature_model.path} ({reason}); "
            "give the Keras model (.keras) instead"
        ) from None


def configure_converter(keras_model: Any, mode: str, calibration: np.ndarray) -> Any:
    """A TFLiteConverter set up for `mode`; reads the SavedModel itself for a signature model."""
    import tensorflow as tf

    from pipeline.models.savedmodel import SignatureModel

    if isinstance(keras_model, SignatureModel):
        converter = tf.lite.TFLiteConverter.from_concrete_functions([keras_model.frozen()], keras_model.loaded)
    else:
        converter = tf.lite.TFLiteConverter.from_keras_model(keras_model)
    if mode == "none":
        return converter
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if mode == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if mode in CALIBRATED:
        converter.representative_dataset = representative(calibration)
    if mode == "int8":
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    if mode == "int16x8":
        converter.target_spec.supported_ops = [
            tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8
        ]
    return converter


def sparse_encoding(
    keras_model: Any, choice: str, mode: str, worth_trying: bool, calibration: np.ndarray, path: Path, where: str,
    log: logging.Logger,
) -> bool:
    """Rewrite the converted model at `path` sparse-encoded when `choice` is true, or (auto) when that
    helps and is `worth_trying`; True if it did. `where` is the stage's config key (`stages.NAME`)."""
    if choice == "false" or (choice == "auto" and not worth_trying):
        return False
    candidate = path.with_name("sparse.tflite")
    candidate.write_bytes(convert(keras_model, mode, calibration, sparse=True))
    runs, smaller = loads_in_litert(candidate), candidate.stat().st_size < path.stat().st_size
    if choice == "true" and not runs:
        raise PipelineError(
            f"{where}.keep_sparsity: LiteRT cannot run the sparse-encoded {mode} model; "
            f"set {where}.keep_sparsity=auto or false"
        )
    if choice == "true" or (runs and smaller):
        candidate.replace(path)
        return True
    log.info("    sparse encoding kept dense (%s)", "larger" if runs else "not runnable in LiteRT")
    candidate.unlink()
    return False


def loads_in_litert(path: Path) -> bool:
    """Whether LiteRT can allocate and invoke the model (some sparse kernels are float-only)."""
    from pipeline.measure import litert

    runner = litert.interpreter(path, threads=1)
    try:
        runner.allocate_tensors()
        runner.invoke()
    except RuntimeError:
        return False
    return True
