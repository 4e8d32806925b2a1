"""qat: quantization-aware fine-tuning, plain or collaborative (keeping sparsity and clusters), to int8 TFLite."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from pipeline.artifact import STRUCTURAL, Effect, ModelArtifact, ModelFormat
from pipeline.errors import PipelineError
from pipeline.stage import Stage, StageContext
from stages._gates import GateParams, apply_gates
from stages._serving import ServingParams, for_serving
from stages._training import FitParams, compile_model, fit

# What each scheme needs an earlier stage to have done to the model, and keeps of it.
KEEPS = {
    "default": frozenset(),
    "pqat": frozenset({Effect.PRUNED}),
    "cqat": frozenset({Effect.CLUSTERED}),
    "pcqat": frozenset({Effect.PRUNED, Effect.CLUSTERED}),
}


class QuantizeAwareParams(FitParams, GateParams, ServingParams):
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


class QuantizeAwareStage(Stage[QuantizeAwareParams]):
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
        aware = quantize_aware(model.load_keras(), scheme)
        settle_ranges(aware, calibration_set(ctx, QuantizeParams(calibration_samples=params.calibration_samples)))
        compile_model(aware, params)
        fit(aware, ctx, params)
        conversion = QuantizeParams(mode="int8", calibration_samples=params.calibration_samples, keep_sparsity="false")
        served, ctx, serving = for_serving(aware, ctx, params, integer=True)
        path = ctx.workdir / "model.tflite"
        path.write_bytes(convert(served, conversion, calibration_set(ctx, conversion), sparse=False))
        metadata: dict[str, Any] = {
            **model.metadata, "quantization": "int8", "qat_scheme": scheme,
            "calibration_samples": params.calibration_samples, "serving": serving,
        }
        gates = apply_gates(params, True, served, path, ctx.data, where)
        metadata.update(gates.facts)
        return ModelArtifact(
            path, ModelFormat.TFLITE, ctx.name, model, metadata, self.output_effects(model), gate=gates.accuracies
        )


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


def quantize_aware(keras_model: Any, scheme: str) -> Any:
    """`keras_model` wrapped by TFMOT's quantize_apply with the scheme's quantization registry."""
    import tensorflow_model_optimization as tfmot

    from pipeline.private_api import cluster_preserving_scheme

    quantization = tfmot.quantization.keras
    if scheme == "default":
        return quantization.quantize_model(keras_model)
    schemes = {
        "pqat": lambda: tfmot.experimental.combine.Default8BitPrunePreserveQuantizeScheme(),
        "cqat": lambda: cluster_preserving_scheme(preserve_sparsity=False),
        "pcqat": lambda: cluster_preserving_scheme(preserve_sparsity=True),
    }
    return quantization.quantize_apply(quantization.quantize_annotate_model(keras_model), schemes[scheme]())
