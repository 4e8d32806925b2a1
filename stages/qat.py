"""qat: quantization-aware fine-tuning, plain or collaborative (keeping sparsity and clusters), to int8 TFLite (int4 weights optional)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
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
from techniques.mixed_precision import resolve
from techniques.mixed_precision import write as write_by_rules
from techniques.qat import AWARE, annotation, quantize_aware, settle_ranges
from techniques.qat_int4 import FOUR_BIT_SCHEMES, float_twin, four_bit_layers, plan_actions
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

    weights: Literal["int8", "int4"] | dict[str, Literal["int8", "int4"]] = Field(
        "int8",
        description=(
            "Weight type the fine-tune trains for and the file holds: int8, or int4 (4-bit fake quantization per "
            "output channel, on the grid ai-edge-quantizer writes) for the whole model, or per layer ({default: int4, "
            "dense_1: int8}). int4 covers Dense and Conv2D layers; others keep int8 weights. Activations stay int8."
        ),
    )

    @model_validator(mode="before")
    @classmethod
    def _no_precision_rules(cls, values: Any) -> Any:
        if isinstance(values, dict) and "precision" in values:
            # Said here rather than as an unknown key: quantize has it, and users carry it over.
            raise ValueError(
                "precision is the quantize stage's: qat trains every layer with 8-bit activations, so int16 or float "
                "layers would undo what it trained; for int4 weights set weights: int4 here, for per-layer precisions "
                "replace this stage with quantize"
            )
        return values

    @model_validator(mode="after")
    def _four_bit_schemes(self) -> QuantizeAwareParams:
        if self.int4 and self.scheme not in ("auto", *FOUR_BIT_SCHEMES):
            raise ValueError(
                f"weights: int4 trains under scheme {' or '.join(FOUR_BIT_SCHEMES)} only, not {self.scheme} (its cluster-"
                f"preserving quantizer is 8-bit); set scheme: pqat or default, or weights: int8"
            )
        if self.int4 and self.fallback == "auto":
            raise ValueError(
                "fallback: auto fine-tunes again with layers float and writes int8, which cannot hold int4 weights; "
                "set fallback: off with weights: int4"
            )
        return self

    @property
    def int4(self) -> bool:
        """Whether any layer is asked int4 weights."""
        return "int4" in ([self.weights] if isinstance(self.weights, str) else self.weights.values())


def chosen_scheme(requested: str, effects: frozenset[Effect]) -> str:
    """The scheme to apply: `requested`, or for auto the one that keeps what earlier stages made."""
    if requested != "auto":
        return requested
    return next(scheme for scheme, keeps in KEEPS.items() if keeps == effects & {Effect.PRUNED, Effect.CLUSTERED})


class QuantizeAwareStage(Stage[QuantizeAwareParams]):
    """Fine-tune with simulated int8 quantization (int4 weights where asked), then write a full-integer TFLite file.

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
        scheme = chosen_scheme(self.config.scheme, effects)
        if self.config.int4 and scheme not in FOUR_BIT_SCHEMES:
            raise PipelineError(
                f"{where}.weights: int4 trains under scheme {' or '.join(FOUR_BIT_SCHEMES)} only, but the clustered model "
                f"reaching it takes {scheme} (its cluster-preserving quantizer is 8-bit); set {where}.scheme: pqat or "
                f"default (clusters are not kept), or {where}.weights: int8"
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
        written = "full-integer int8"
        if self.config.int4:
            actions = plan_actions(actions, *self.four_bit(model, scheme, where))
            written += " with int4 weights where marked, written by ai-edge-quantizer (global min/max calibration)"
        return StagePlan(
            actions,
            f"scheme {scheme}, then {written}; calibrated only: {', '.join(calibrated) or 'none'}{fallback_note(self.config)}",
        )

    def four_bit(self, model: Any, scheme: str, where: str) -> tuple[set[str], dict[str, str]]:
        """The layers that train with 4-bit weights, and why each other layer asked int4 keeps int8."""
        if not self.config.int4:
            return set(), {}
        _, choices = resolve(model, {}, self.config.weights, "int8", where)
        aware = {name for name, action in annotation(model, scheme).items() if action.kind == AWARE}
        return four_bit_layers(model, {name: choice.weights for name, choice in choices.items()}, aware)

    def run(self, model: ModelArtifact | None, ctx: StageContext) -> ModelArtifact:
        assert model is not None  # guaranteed by `accepts`
        params = self.config
        where = f"stages.{ctx.name}"
        self.check_input(model.format, model.effects, where)  # also when called without a checked recipe
        scheme = chosen_scheme(params.scheme, model.effects)
        settling = calibration_set(ctx.data.x_train, params.calibration_samples, ctx.seed)  # training inputs, as the model trains on them
        four_bit, kept = self.four_bit(model.load_keras(), scheme, where)
        aware, calibrated = self.tuned(model, scheme, settling, ctx, four_bit=four_bit)
        # int4 weights: ai-edge-quantizer rewrites the float model holding the fine-tuned weights, on the grid they trained on.
        served, data, serving = for_serving(float_twin(model.load_keras(), aware) if four_bit else aware, ctx.data, params, True, ctx.log)
        calibration = calibration_set(data.x_train, params.calibration_samples, ctx.seed)  # as the converted model takes them
        path = ctx.workdir / "model.tflite"
        if kept:
            ctx.log.info("    int8 weights kept: %s", "; ".join(f"{name} ({why})" for name, why in kept.items()))
        metadata: dict[str, Any] = {
            **model.metadata, "quantization": "int8", "qat_scheme": scheme,
            "calibration_samples": params.calibration_samples, "calibrated_layers": list(calibrated), "serving": serving,
            **self.write(served, four_bit, calibration, path, where),
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

    @staticmethod
    def write(served: Any, four_bit: Collection[str], calibration: Any, path: Path, where: str) -> dict[str, Any]:
        """Write the .tflite to `path`: int8 by TFLiteConverter from the fake-quantized model, or, with `four_bit`
        layers, by ai-edge-quantizer as the quantize stage writes int4 weights (checked to hold them); and
        the metadata that says which layer got what."""
        if not four_bit:
            path.write_bytes(convert(served, "int8", calibration, sparse=False))
            return {}
        weights = {"default": "int8", **dict.fromkeys(sorted(four_bit), "int4")}
        flatbuffer, choices = write_by_rules(served, "int8", {}, weights, calibration, where)
        path.write_bytes(flatbuffer)
        return {"layer_precisions": {name: choice.words for name, choice in choices.items()}}

    def tuned(
        self, model: ModelArtifact, scheme: str, calibration: Any, ctx: StageContext, keep_float: Sequence[str] = (),
        four_bit: Collection[str] = (),
    ) -> tuple[Any, dict[str, str]]:
        """The incoming model wrapped for quantization-aware training (but `keep_float`; `four_bit` layers with
        4-bit weights) and fine-tuned, and the layers TFMOT cannot train quantization-aware (calibrated at
        conversion), with their types."""
        aware, calibrated = quantize_aware(model.load_keras(), scheme, keep_float, four_bit)
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
