"""qat: quantization-aware fine-tuning, plain or collaborative (keeping sparsity and clusters), to int8 TFLite."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from pipeline.errors import PipelineError
from pipeline.plugin.artifact import STRUCTURAL, Effect, ModelArtifact, ModelFormat
from pipeline.plugin.stage import Stage, StageContext
from pipeline.run.layer_plan import LayerPlan, StagePlan
from techniques.conversion import CALIBRATION_SAMPLES, calibration_set, convert
from techniques.fallback import Fallback, FallbackParams, check_budget, fall_back, fallback_note, fallback_remedies, float_kept
from techniques.gates import GateParams, apply_gates
from techniques.layers import require_layer_graph
from techniques.qat import AWARE, annotation, quantize_aware, settle_ranges
from techniques.serving import ServingParams, for_serving, serving_model
from techniques.training import FitParams, compile_model, fit

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
        CALIBRATION_SAMPLES, ge=1, le=100_000, description="Training examples the converter sees (QAT has learnt the ranges)."
    )

    @model_validator(mode="before")
    @classmethod
    def _no_precision_rules(cls, values: Any) -> Any:
        asked = [key for key in ("precision", "weights") if isinstance(values, dict) and key in values]
        if asked:
            # Said here rather than as an unknown key: quantize has these keys, and users carry them over.
            keys = f"{' and '.join(asked)} {'are' if len(asked) > 1 else 'is'}"
            raise ValueError(
                f"{keys} the quantize stage's: qat trains with TFMOT's 8-bit fake quantization and "
                f"writes int8 with TFLiteConverter, so int4 weights or per-layer precisions would undo what it trained; "
                f"replace this stage with quantize (its fallback: auto gives int8 or float back where int4 misses the budget)"
            )
        return values


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

    produces: ClassVar = ModelFormat.TFLITE

    @property
    def uses_budget(self) -> bool:
        return self.config.fallback == "auto"

    def check_settings(self, settings: Any, where: str) -> None:
        """The gates need a validation split; fallback=auto needs a recipe budget or the stage's tolerance."""
        self.config.check_settings(settings, where)
        check_budget(self.config, settings, where)

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

    def accuracy_remedies(self, where: str) -> list[str]:
        """This stage already trains quantization-aware: longer fine-tuning, and the float fallback when it is off."""
        return [f"fine-tune longer ({where}.epochs, now {self.config.epochs})", *fallback_remedies(self.config.fallback, where)]

    def layer_plan(self, model: Any, earlier: LayerPlan, where: str) -> StagePlan:
        """Which layers train quantization-aware and which are only calibrated at conversion (and why)."""
        require_layer_graph(model, where)
        scheme = chosen_scheme(self.config.scheme, earlier.effects)
        actions = annotation(model, scheme)
        calibrated = [name for name, action in actions.items() if action.kind != AWARE]
        return StagePlan(
            actions,
            f"scheme {scheme}, then full-integer int8; calibrated only: {', '.join(calibrated) or 'none'}{fallback_note(self.config)}",
        )

    def run(self, model: ModelArtifact | None, ctx: StageContext) -> ModelArtifact:
        assert model is not None  # guaranteed by `accepts`
        params = self.config
        where = f"stages.{ctx.name}"
        self.check_input(model.format, model.effects, where)  # also when called without a checked recipe
        scheme = chosen_scheme(params.scheme, model.effects)
        settling = calibration_set(ctx.data.x_train, params.calibration_samples, ctx.seed)  # training inputs, as the model trains on them
        aware, calibrated = self.tuned(model, scheme, settling, ctx)
        served, data, serving = for_serving(aware, ctx.data, params, True, ctx.log)
        calibration = calibration_set(data.x_train, params.calibration_samples, ctx.seed)  # as the converted model takes them
        path = ctx.workdir / "model.tflite"
        path.write_bytes(convert(served, "int8", calibration, sparse=False))
        metadata: dict[str, Any] = {
            **model.metadata, "quantization": "int8", "qat_scheme": scheme,
            "calibration_samples": params.calibration_samples, "calibrated_layers": list(calibrated), "serving": serving,
        }
        fallen = Fallback()
        if params.fallback == "auto":
            # Layers are ranked by their int8 error in the incoming float model; each candidate is
            # a fine-tune in which the chosen layers stay float, since a layer trained with fake
            # quantization keeps it in the converted file.
            def serve(keras_model: Any) -> Any:
                return serving_model(
                    keras_model, ctx.data.preprocessing, serving["inputs"], serving["outputs"], ctx.data.target_scale, ctx.data.task
                )

            candidate = functools.partial(self.candidate, model, scheme, settling, ctx, serve, calibration)
            fallen = fall_back(
                serve(model.load_keras()), calibration, path, params.accuracy_tolerance, data, ctx.budget, where, ctx.log, candidate
            )
        metadata.update(fallen.facts)
        # The gate compares with the fine-tuned model, not the float one the fallback measured: only
        # the shipped file's accuracy is known already.
        known = {"tflite_accuracy": fallen.accuracies["tflite_accuracy"]} if fallen.accuracies else None
        gates = apply_gates(
            params, True, served, path, data, where, fallen.float_layers, ctx.log, known,
            self.accuracy_remedies(where),
        )
        metadata.update(gates.facts)
        return ModelArtifact(
            path, ModelFormat.TFLITE, ctx.name, model, metadata, self.output_effects(model),
            metrics=fallen.metrics, gate=gates.accuracies, reports=fallen.reports,
        )

    def tuned(
        self, model: ModelArtifact, scheme: str, calibration: Any, ctx: StageContext, keep_float: Sequence[str] = ()
    ) -> tuple[Any, dict[str, str]]:
        """The incoming model wrapped for quantization-aware training (but `keep_float`) and fine-tuned,
        and the layers TFMOT cannot train quantization-aware (calibrated at conversion), with their types."""
        aware, calibrated = quantize_aware(model.load_keras(), scheme, keep_float)
        if not keep_float:  # the first fine-tune; a fallback's later ones differ only by the float layers
            ctx.log.info(
                "    quantization-aware training, scheme %s; calibrated at conversion only (TFMOT cannot train them "
                "quantization-aware): %s", scheme, ", ".join(f"{name} ({kind})" for name, kind in calibrated.items()) or "none",
            )
        settle_ranges(aware, calibration)
        compile_model(aware, self.config, task=ctx.data.task)
        fit(aware, self.config, ctx.data, ctx.device, seed=ctx.seed + ctx.index, log=ctx.log, name=ctx.name)
        return aware, calibrated

    def candidate(
        self, model: ModelArtifact, scheme: str, settling: Any, ctx: StageContext, serve: Callable[[Any], Any],
        calibration: Any, float_layers: list[str],
    ) -> bytes:
        """The int8 file of a fine-tune in which `float_layers` stay float, in training and in the file.

        `settling` are training inputs (the model trains on them), `serve` wraps the fine-tuned
        model as it is converted, and `calibration` are inputs as the converted model takes them.
        """
        ctx.log.info("    fine-tuning again with %s float", ", ".join(float_layers))
        return float_kept(serve(self.tuned(model, scheme, settling, ctx, float_layers)[0]), calibration, float_layers)
