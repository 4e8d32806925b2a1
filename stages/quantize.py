"""quantize: convert a Keras model or an inference-only SavedModel to TFLite, with post-training quantization and ship gates."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field, model_validator

from pipeline.artifact import Effect, ModelArtifact, ModelFormat
from pipeline.errors import PipelineError
from pipeline.fields import Switch
from pipeline.layer_plan import Action, LayerPlan, StagePlan
from pipeline.stage import StageContext
from stages._fallback import Fallback, FallbackParams, FallbackStage, fall_back
from stages._gates import GateParams, apply_gates
from stages._serving import ServingParams, contract, for_serving

# Modes that calibrate activation ranges on a representative dataset.
CALIBRATED = {"int8", "int16x8"}
# Modes whose weights stay floating point.
FLOAT_MODES = {"none", "float16"}
# What each mode makes of a layer, in the layer plan.
MODE_WORDS = {"none": "float32", "dynamic": "int8 weights", "float16": "float16 weights", "int8": "int8", "int16x8": "int16x8"}


class QuantizeParams(GateParams, ServingParams, FallbackParams):
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
    keep_sparsity: Switch = Field(
        "auto",
        description=(
            "Store pruned weights sparse-encoded (Optimize.EXPERIMENTAL_SPARSITY); auto: after pruning, for "
            "float32/float16 models, only when the file gets smaller and still runs in LiteRT."
        ),
    )

    @model_validator(mode="after")
    def _integer_needs_int8(self) -> QuantizeParams:
        if self.require_integer == "true" and self.mode != "int8":
            raise ValueError("require_integer=true needs mode=int8 (int8 input, output and operators)")
        if self.fallback == "auto" and self.mode != "int8":
            # TF 2.21 quantizes int16 activations with a calibrator that cannot keep chosen layers float.
            raise ValueError("fallback=auto needs mode=int8 (TFLite can keep chosen layers float only in int8 models)")
        return self


class QuantizeStage(FallbackStage[QuantizeParams]):
    """Keras model or inference-only SavedModel -> .tflite via tf.lite.TFLiteConverter."""

    Config: ClassVar = QuantizeParams
    accepts: ClassVar = frozenset({ModelFormat.KERAS, ModelFormat.SAVED_MODEL})
    produces: ClassVar = ModelFormat.TFLITE

    def check_input(self, input_format: ModelFormat | None, effects: frozenset[Effect], where: str) -> None:
        if self.config.fallback == "auto" and input_format is ModelFormat.SAVED_MODEL:
            raise PipelineError(
                f"{where}.fallback: auto keeps chosen Keras layers float, but the model is an inference-only SavedModel; "
                f"give the Keras model (.keras) or set {where}.fallback=off"
            )

    def accuracy_remedies(self, where: str) -> list[str]:
        """For int8: quantization-aware training, and the float fallback when it is off. Both make
        int8 models, so other modes are offered only a larger tolerance."""
        if self.config.mode != "int8":
            return []
        return ["use quantization-aware training (a qat stage)", *super().accuracy_remedies(where)]

    def layer_plan(self, model: Any, earlier: LayerPlan, where: str) -> StagePlan:
        """The number format of each layer with weights in the TFLite file."""
        mode = self.config.mode
        actions = {layer.name: Action(MODE_WORDS[mode]) for layer in model.layers if layer.weights}
        calibrated = f", calibrated on {self.config.calibration_samples} training examples" if mode in CALIBRATED else ""
        return StagePlan(
            actions,
            f"TFLite {MODE_WORDS[mode]}{calibrated}; layers TFLite runs only in float are named after conversion"
            f"{self.fallback_note()}",
        )

    def run(self, model: ModelArtifact | None, ctx: StageContext) -> ModelArtifact:
        assert model is not None  # guaranteed by `accepts`
        params: QuantizeParams = self.config
        where = f"stages.{ctx.name}"
        if model.format is ModelFormat.SAVED_MODEL:  # a serving signature takes what it was saved to take
            keras_model, serving = model.load_model(), contract("preprocessed", "logits")
        else:
            keras_model, ctx, serving = for_serving(model.load_keras(), ctx, params, integer=params.mode in CALIBRATED)
        calibration = calibration_set(ctx, params)
        path = ctx.workdir / "model.tflite"
        path.write_bytes(convert_saved(keras_model, params, calibration, where) if model.format is ModelFormat.SAVED_MODEL
                         else convert(keras_model, params, calibration, sparse=False))
        sparse = self.sparse_encoding(keras_model, model, calibration, path, ctx)
        metadata: dict[str, Any] = {
            **model.metadata, "quantization": params.mode, "sparse_encoding": sparse, "serving": serving,
            "calibration_samples": len(calibration) if params.mode in CALIBRATED else 0,
        }
        fallen = fall_back(keras_model, calibration, path, params.accuracy_tolerance, ctx) if params.fallback == "auto" else Fallback()
        metadata.update(fallen.facts)
        gates = apply_gates(
            params, params.mode == "int8", keras_model, path, ctx.data, where, fallen.float_layers, ctx.log, fallen.accuracies,
            self.accuracy_remedies(where),
        )
        metadata.update(gates.facts)
        return ModelArtifact(
            path, ModelFormat.TFLITE, ctx.name, model, metadata, self.output_effects(model),
            metrics=fallen.metrics, gate=gates.accuracies, reports=fallen.reports,
        )

    def sparse_encoding(
        self, keras_model: Any, model: ModelArtifact, calibration: np.ndarray, path: Path, ctx: StageContext
    ) -> bool:
        """Rewrite `path` sparse-encoded when asked to, or (auto) when that helps; True if it did."""
        choice = self.config.keep_sparsity
        # XNNPACK's sparse kernels are floating-point only: a sparse-encoded integer model came out
        # larger and did not run, so `auto` does not spend a second conversion finding that out.
        worth_trying = Effect.PRUNED in model.effects and self.config.mode in FLOAT_MODES
        if choice == "false" or (choice == "auto" and not worth_trying):
            return False
        candidate = ctx.workdir / "sparse.tflite"
        candidate.write_bytes(convert(keras_model, self.config, calibration, sparse=True))
        runs, smaller = loads_in_litert(candidate), candidate.stat().st_size < path.stat().st_size
        if choice == "true" and not runs:
            raise PipelineError(
                f"stages.{ctx.name}.keep_sparsity: LiteRT cannot run the sparse-encoded {self.config.mode} model; "
                f"set stages.{ctx.name}.keep_sparsity=auto or false"
            )
        if choice == "true" or (runs and smaller):
            candidate.replace(path)
            return True
        ctx.log.info("    sparse encoding kept dense (%s)", "larger" if runs else "not runnable in LiteRT")
        candidate.unlink()
        return False


def loads_in_litert(path: Path) -> bool:
    """Whether LiteRT can allocate and invoke the model (some sparse kernels are float-only)."""
    from pipeline import litert

    runner = litert.interpreter(path, threads=1)
    try:
        runner.allocate_tensors()
        runner.invoke()
    except RuntimeError:
        return False
    return True


def calibration_set(ctx: StageContext, params: QuantizeParams) -> np.ndarray:
    """A seeded random sample of the training split (never the test split)."""
    rng = np.random.default_rng(ctx.seed)
    count = min(params.calibration_samples, len(ctx.data.x_train))
    return ctx.data.x_train[rng.choice(len(ctx.data.x_train), size=count, replace=False)]


def convert(keras_model: Any, params: QuantizeParams, calibration: np.ndarray, sparse: bool) -> bytes:
    """The TFLite flatbuffer for `params.mode`."""
    converter = configure_converter(keras_model, params, calibration)
    if sparse:
        import tensorflow as tf

        converter.optimizations = [*converter.optimizations, tf.lite.Optimize.EXPERIMENTAL_SPARSITY]
    with warnings.catch_warnings():
        # Emitted for every calibrated conversion from Keras; it asks for nothing we can supply.
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs were expected")
        return converter.convert()


def convert_saved(signature_model: Any, params: QuantizeParams, calibration: np.ndarray, where: str) -> bytes:
    """`convert` for an inference-only SavedModel, whose graph may hold what the converter cannot take.

    A Keras model is made of layers the converter knows; a SavedModel is whatever was traced
    (custom ops, variables updated at inference), and the converter fails deep inside on those.
    """
    try:
        return convert(signature_model, params, calibration, sparse=False)
    except Exception as error:  # noqa: BLE001 - the converter raises RuntimeError, ConverterError, ValueError
        reason = " ".join(str(error).split())[-200:]
        raise PipelineError(
            f"{where}: the TFLite converter cannot convert the SavedModel {signature_model.path} ({reason}); "
            "give the Keras model (.keras) instead"
        ) from None


def configure_converter(keras_model: Any, params: QuantizeParams, calibration: np.ndarray) -> Any:
    """A TFLiteConverter set up for `params.mode`; reads the SavedModel itself for a signature model."""
    import tensorflow as tf

    from pipeline.savedmodel import SignatureModel

    if isinstance(keras_model, SignatureModel):
        converter = tf.lite.TFLiteConverter.from_concrete_functions([keras_model.frozen()], keras_model.loaded)
    else:
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
