"""qat: quantization-aware fine-tuning, plain or collaborative (keeping sparsity and clusters), to int8 TFLite."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Literal

from pydantic import Field

from pipeline.artifact import STRUCTURAL, Effect, ModelArtifact, ModelFormat
from pipeline.errors import PipelineError
from pipeline.stage import StageContext
from stages._fallback import (
    Fallback,
    FallbackParams,
    FallbackStage,
    fall_back,
    float_kept,
)
from stages._gates import GateParams, apply_gates
from stages._serving import ServingParams, for_serving, serving_model
from stages._training import FitParams, compile_model, fit

# What each scheme needs an earlier stage to have done to the model, and keeps of it.
KEEPS = {
    "default": frozenset(),
    "pqat": frozenset({Effect.PRUNED}),
    "cqat": frozenset({Effect.CLUSTERED}),
    "pcqat": frozenset({Effect.PRUNED, Effect.CLUSTERED}),
}


class QuantizeAwareParams(FitParams, GateParams, ServingParams, FallbackParams):
    """Parameters of the qat stage."""

    scheme: Literal["auto", "default", "pqat", "cqat", "pcqat"] = Field(
        "auto",
        description=(
            "default: plain QAT; pqat keeps sparsity, cqat keeps clusters, pcqat keeps both; "
            "auto picks from what earlier stages did."
        ),
    )
    epochs: int = Field(2, ge=1, le=10_000, description="Fine-tuning passes with simulated int8 quantization.")
    learning_rate: float = Field(1e-4, gt=0, le=10, description="Fine-tuning optimizer step size.")
    calibration_samples: int = Field(
        200, ge=1, le=100_000, description="Training examples the converter sees (QAT has learnt the ranges)."
    )


def chosen_scheme(requested: str, effects: frozenset[Effect]) -> str:
    """The scheme to apply: `requested`, or for auto the one that keeps what earlier stages made."""
    if requested != "auto":
        return requested
    return next(scheme for scheme, keeps in KEEPS.items() if keeps == effects & {Effect.PRUNED, Effect.CLUSTERED})


class QuantizeAwareStage(FallbackStage):
    """Fine-tune with simulated int8 quantization, then convert to a full-integer int8 TFLite file.

    TFMOT's quantize wrappers (the cluster-preserving ones in particular) do not reload from a
    saved file, so training and conversion happen in one stage and the hand-off is the TFLite file.
    """

    Config: ClassVar = QuantizeAwareParams
    produces: ClassVar = ModelFormat.TFLITE

    def check_input(self, input_format: ModelFormat | None, effects: frozenset[Effect], where: str) -> None:
        missing = sorted(KEEPS.get(self.config.scheme, frozenset()) - effects)
        if missing:
            raise PipelineError(
                f"{where}.scheme: '{self.config.scheme}' keeps what an earlier stage made, but the model reaching it "
                f"is not {' or '.join(m.value for m in missing)}; use scheme=auto or add such a stage first"
            )

    def effects_after(self, incoming: frozenset[Effect]) -> frozenset[Effect]:
        """Quantization-aware, keeping what the scheme preserves (auto keeps all it finds)."""
        kept = incoming if self.config.scheme == "auto" else incoming & (KEEPS[self.config.scheme] | STRUCTURAL)
        return kept | {Effect.QUANTIZE_AWARE}

    def run(self, model: ModelArtifact | None, ctx: StageContext) -> ModelArtifact:
        from stages.quantize import QuantizeParams, calibration_set, convert

        assert model is not None  # guaranteed by `accepts`
        params: QuantizeAwareParams = self.config
        where = f"stages.{ctx.name}"
        self.check_input(model.format, model.effects, where)  # also when called without a checked recipe
        scheme = chosen_scheme(params.scheme, model.effects)
        ctx.log.info("    quantization-aware training, scheme %s", scheme)
        conversion = QuantizeParams(mode="int8", calibration_samples=params.calibration_samples, keep_sparsity="false")
        settling = calibration_set(ctx, conversion)  # training inputs, as the model trains on them
        aware = self.tuned(model, scheme, settling, ctx)
        served, serving_ctx, serving = for_serving(aware, ctx, params, integer=True)
        calibration = calibration_set(serving_ctx, conversion)  # as the converted model takes them
        path = ctx.workdir / "model.tflite"
        path.write_bytes(convert(served, conversion, calibration, sparse=False))
        metadata: dict[str, Any] = {
            **model.metadata, "quantization": "int8", "qat_scheme": scheme,
            "calibration_samples": params.calibration_samples, "serving": serving,
        }
        fallen = Fallback()
        if params.fallback == "auto":
            # Layers are ranked by their int8 error in the incoming float model; each candidate is
            # a fine-tune in which the chosen layers stay float, since a layer trained with fake
            # quantization keeps it in the converted file.
            def serve(keras_model: Any) -> Any:
                return serving_model(keras_model, ctx.data.preprocessing, serving["inputs"], params.outputs)

            candidate = functools.partial(self.candidate, model, scheme, settling, ctx, serve, calibration)
            fallen = fall_back(serve(model.load_keras()), calibration, path, params.accuracy_tolerance, serving_ctx, candidate)
        metadata.update(fallen.facts)
        # The gate compares with the fine-tuned model, not the float one the fallback measured: only
        # the shipped file's accuracy is known already.
        known = {"tflite_accuracy": fallen.accuracies["tflite_accuracy"]} if fallen.accuracies else None
        gates = apply_gates(params, True, served, path, serving_ctx.data, where, fallen.float_layers, ctx.log, known)
        metadata.update(gates.facts)
        return ModelArtifact(
            path, ModelFormat.TFLITE, ctx.name, model, metadata, self.output_effects(model),
            metrics=fallen.metrics, gate=gates.accuracies, reports=fallen.reports,
        )

    def tuned(self, model: ModelArtifact, scheme: str, calibration: Any, ctx: StageContext, keep_float: Sequence[str] = ()) -> Any:
        """The incoming model wrapped for quantization-aware training (but `keep_float`) and fine-tuned."""
        aware = quantize_aware(model.load_keras(), scheme, keep_float)
        settle_ranges(aware, calibration)
        compile_model(aware, self.config)
        fit(aware, ctx, self.config)
        return aware

    def candidate(
        self, model: ModelArtifact, scheme: str, settling: Any, ctx: StageContext, serve: Callable[[Any], Any],
        calibration: Any, float_layers: list[str],
    ) -> bytes:
        """The int8 file of a fine-tune in which `float_layers` stay float, in training and in the file.

        `settling` are training inputs (the model trains on them), `serve` wraps the fine-tuned
        model as it is converted, and `calibration` are inputs as the converted model takes them.
        """
        ctx.log.info("    fine-tuning again with %s float", ", ".join(float_layers))
        return float_kept(serve(self.tuned(model, scheme, settling, ctx, float_layers)), calibration, float_layers)


def settle_ranges(aware: Any, calibration: Any, rounds: int = 3) -> None:
    """Start the activation ranges at the calibration data's, not at TFMOT's [-6, 6].

    TFMOT moves each activation range towards the batch's by 0.1% per training step (an EMA
    with decay 0.999, no bias correction), so a fine-tune of a few hundred steps converts with
    ranges still near their start and loses accuracy to coarse steps. One training-mode pass
    over a calibration batch updates each moving range as `new = 0.999 * old + 0.001 * batch`;
    solving for `batch` and assigning it sets the range at once. Weight ranges (last-value
    quantizers) are assigned directly by every pass and recognised by not changing on a repeat.
    """
    import numpy as np

    ranges = [v for v in aware.non_trainable_variables if v.name.endswith(("_min:0", "_max:0"))]
    aware(calibration, training=True)  # weight ranges take their values
    moving = None
    for _ in range(rounds):  # later layers see better-quantized inputs each round
        before = [v.numpy() for v in ranges]
        aware(calibration, training=True)
        after = [v.numpy() for v in ranges]
        if moving is None:
            moving = [i for i, (b, a) in enumerate(zip(before, after)) if not np.array_equal(a, b)]
        for i in moving:
            ranges[i].assign((after[i] - 0.999 * before[i]) / 0.001)


def quantize_aware(keras_model: Any, scheme: str, keep_float: Sequence[str] = ()) -> Any:
    """`keras_model` wrapped by TFMOT's quantize_apply with the scheme's quantization registry.

    Layers named in `keep_float` are annotated with a configuration that quantizes nothing (not
    their weights, not their outputs), so they train in float; the converter must then be told to
    keep them float too (`_fallback.float_kept`). Left un-annotated instead, TFMOT would still
    fake-quantize the output of any that feeds a quantized layer, and the converter would follow.
    """
    import tensorflow_model_optimization as tfmot
    import tf_keras as keras
    from tensorflow_model_optimization.python.core.quantization.keras.collab_opts.cluster_preserve import (
        default_8bit_cluster_preserve_quantize_scheme as cluster_preserve,
    )

    quantization = tfmot.quantization.keras
    if scheme == "default" and not keep_float:
        return quantization.quantize_model(keras_model)
    schemes = {
        "default": lambda: quantization.default_8bit.Default8BitQuantizeScheme(),
        "pqat": lambda: tfmot.experimental.combine.Default8BitPrunePreserveQuantizeScheme(),
        "cqat": lambda: cluster_preserve.Default8BitClusterPreserveQuantizeScheme(preserve_sparsity=False),
        "pcqat": lambda: cluster_preserve.Default8BitClusterPreserveQuantizeScheme(preserve_sparsity=True),
    }
    if not keep_float:
        return quantization.quantize_apply(quantization.quantize_annotate_model(keras_model), schemes[scheme]())
    float_config = unquantized_config()

    def annotate(layer: Any) -> Any:
        config = float_config() if layer.name in keep_float else None
        return quantization.quantize_annotate_layer(layer, quantize_config=config)

    annotated = keras.models.clone_model(keras_model, clone_function=annotate)
    with quantization.quantize_scope({float_config.__name__: float_config}):
        return quantization.quantize_apply(annotated, schemes[scheme]())


@functools.cache
def unquantized_config() -> type:
    """A TFMOT QuantizeConfig that quantizes nothing: the layer trains and runs in float.

    Made on first use so that TFMOT is imported only when quantization-aware training runs.
    """
    import tensorflow_model_optimization as tfmot

    class KeepFloat(tfmot.quantization.keras.QuantizeConfig):
        """No weight, activation or output quantizers."""

        def get_weights_and_quantizers(self, layer: Any) -> list:
            return []

        def get_activations_and_quantizers(self, layer: Any) -> list:
            return []

        def set_quantize_weights(self, layer: Any, quantize_weights: list) -> None:
            pass

        def set_quantize_activations(self, layer: Any, quantize_activations: list) -> None:
            pass

        def get_output_quantizers(self, layer: Any) -> list:
            return []

        def get_config(self) -> dict:
            return {}

    return KeepFloat
