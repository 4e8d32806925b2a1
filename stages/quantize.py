"""quantize: convert a Keras model or an inference-only SavedModel to TFLite, with post-training quantization and ship gates."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from pipeline.errors import PipelineError
from pipeline.plugin.artifact import Effect, ModelArtifact, ModelFormat
from pipeline.plugin.fields import Switch
from pipeline.plugin.stage import Stage, StageContext
from pipeline.run.layer_plan import Action, LayerPlan, StagePlan
from techniques import precision_fallback
from techniques.conversion import (
    CALIBRATED,
    CALIBRATION_SAMPLES,
    FLOAT_MODES,
    calibration_set,
    convert,
    convert_saved,
    sparse_encoding,
)
from techniques.fallback import Fallback, FallbackParams, check_budget, fall_back, fallback_note, fallback_remedies
from techniques.gates import GateParams, apply_gates
from techniques.mixed_precision import Choice, Plan, check_written, needs_quantizer, plan, resolve
from techniques.serving import ServingParams, contract, for_serving

# What each mode makes of a layer, in the layer plan.
MODE_WORDS = {"none": "float32", "dynamic": "int8 weights", "float16": "float16 weights", "int8": "int8", "int16x8": "int16x8"}

Step = Literal["int8", "int16", "float"]
# What fallback=auto did before it could choose precisions: widen int4 weights, else keep float.
DEFAULT_STEPS: tuple[Step, ...] = ("int8", "float")


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
        CALIBRATION_SAMPLES, ge=1, le=100_000, description="Training examples used to calibrate int8/int16x8 ranges."
    )
    precision: dict[str, Literal["int8", "int16", "float"]] = Field(
        default_factory=dict,
        description=(
            "A precision per layer, by layer name or Keras type (Dense), name first: int8, int16 (int16 "
            "activations, int8 weights) or float; `default` for the rest (else the mode's). E.g. {dense_1: int16, "
            "Conv2D: float}. Written by ai-edge-quantizer; int16 runs slowly on CPU (XNNPACK)."
        ),
    )
    weights: Literal["int8", "int4"] | dict[str, Literal["int8", "int4"]] = Field(
        "int8",
        description=(
            "Weight type of the quantized layers: int8, or int4 (channelwise; halves the weights) for the whole "
            "model, or per layer like precision ({default: int4, dense_1: int8}). int4 is written by ai-edge-quantizer."
        ),
    )
    fallback_steps: list[Step] = Field(
        default_factory=lambda: list(DEFAULT_STEPS),
        description=(
            "With fallback=auto, the steps a layer may climb, cheapest first: int8 (int4 weights to int8), int16 "
            "(int16 activations, slow on CPU) and float. With int16, or without float, ai-edge-quantizer writes the file."
        ),
    )
    fallback_error_by: Literal["own", "quantizer"] = Field(
        "own",
        description=(
            "With fallback=auto on a file ai-edge-quantizer writes, how a layer's error alone is measured to rank the "
            "layers: own (the logits' noise-to-signal ratio) or quantizer (ai-edge-quantizer's validation of the "
            "layer's output, 1/sqrt(SNR))."
        ),
    )
    fallback_max_latency_ms: float | None = Field(
        None, gt=0, description="With fallback=auto: refuse a step whose model's p50 latency (batch 1, 1 thread) exceeds this."
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
        if self.fallback == "auto" and self.mode != "int8" and not self.mixed:
            # TF 2.21 quantizes int16 activations with a calibrator that cannot keep chosen layers float.
            raise ValueError(
                "fallback=auto needs mode=int8 (TFLite can keep chosen layers float only in int8 models), "
                "or precision rules (ai-edge-quantizer can)"
            )
        if self.mixed and self.mode not in CALIBRATED:
            raise ValueError("precision, int4 weights and int16 fallback steps need mode=int8 or int16x8 (a calibrated integer model)")
        if self.fallback == "auto" and not self.fallback_steps:
            raise ValueError("fallback=auto needs at least one of fallback_steps: int8, int16, float")
        if self.require_integer == "true" and "float" in self.precision.values():
            raise ValueError("require_integer=true forbids the float layers precision asks for; set require_integer=auto")
        return self

    @property
    def mixed(self) -> bool:
        """Whether the rules ask for what TFLiteConverter cannot write (then ai-edge-quantizer writes the file)."""
        rules = needs_quantizer(self.precision, self.weights, "int16" if self.mode == "int16x8" else "int8")
        # TFLiteConverter's fallback only keeps layers float and ranks them its own way; any other ladder,
        # or ranking by the quantizer's validation, needs the quantizer.
        ladder = "int16" in self.fallback_steps or "float" not in self.fallback_steps or self.fallback_error_by == "quantizer"
        return rules or (self.fallback == "auto" and ladder)


class QuantizeStage(Stage[QuantizeParams]):
    """Keras model or inference-only SavedModel -> .tflite via tf.lite.TFLiteConverter."""

    accepts: ClassVar = frozenset({ModelFormat.KERAS, ModelFormat.SAVED_MODEL})
    produces: ClassVar = ModelFormat.TFLITE

    @property
    def uses_budget(self) -> bool:
        return self.config.fallback == "auto"

    def check_settings(self, settings: Any, where: str) -> None:
        """The gates need a validation split; fallback=auto needs a recipe budget or the stage's tolerance."""
        self.config.check_settings(settings, where)
        check_budget(self.config, settings, where)

    def check_input(self, input_format: ModelFormat | None, effects: frozenset[Effect], where: str) -> None:
        if self.config.fallback == "auto" and input_format is ModelFormat.SAVED_MODEL:
            raise PipelineError(
                f"{where}.fallback: auto keeps chosen Keras layers float, but the model is an inference-only SavedModel; "
                f"give the Keras model (.keras) or set {where}.fallback=off"
            )

    def refusal(self, input_format: ModelFormat | None, effects: frozenset[Effect], made_by: str, where: str) -> str | None:
        """After qat: its file is already int8, and both converters (and ai-edge-quantizer) start from float."""
        if Effect.QUANTIZE_AWARE not in effects:
            return None
        return (
            f"gets the int8 TFLite file {made_by} wrote, but quantize converts a float Keras model or SavedModel "
            f"(ai-edge-quantizer too rewrites only float files); keep {made_by}'s file and drop {where}; for int4 weights "
            f"set weights: int4 in the qat stage (it trains for them), or drop {made_by} and let {where} write the file (fallback: "
            f"auto gives int8 or float back to layers where int4 misses the budget); for per-layer precisions the latter"
        )

    def accuracy_remedies(self, where: str) -> list[str]:
        """For int8: quantization-aware training, and the float fallback when it is off. Both make
        int8 models, so other modes are offered only a larger tolerance."""
        if self.config.mode != "int8":
            return []
        return ["use quantization-aware training (a qat stage)", *fallback_remedies(self.config.fallback, where)]

    def layer_plan(self, model: Any, earlier: LayerPlan, where: str) -> StagePlan:
        """The number format of each layer with weights in the TFLite file."""
        mode = self.config.mode
        actions = {layer.name: Action(MODE_WORDS[mode]) for layer in model.layers if layer.weights}
        if self.config.mixed:
            _, choices = resolve(model, self.config.precision, self.config.weights, "int16" if mode == "int16x8" else "int8", where)
            actions = {name: Action(choices[name].words) for name in actions if name in choices}
        calibrated = f", calibrated on {self.config.calibration_samples} training examples" if mode in CALIBRATED else ""
        note = fallback_note(self.config)
        if self.config.mixed:
            calibrated += " (global min/max); written by ai-edge-quantizer"
            if self.config.fallback == "auto":
                note = (
                    f"; fallback auto: if the model misses the accuracy budget on the validation split, the layer whose error "
                    f"alone hurts most takes the cheapest of {', '.join(self.config.fallback_steps)} that holds, one layer at "
                    f"a time (named after conversion, in fallback.md)"
                )
        return StagePlan(
            actions, f"TFLite {MODE_WORDS[mode]}{calibrated}; layers TFLite runs only in float are named after conversion{note}"
        )

    def write(self, keras_model: Any, source: ModelFormat, rules: Plan | None, calibration: Any, path: Path, where: str) -> None:
        """Write the .tflite to `path`: by ai-edge-quantizer when there are `rules`, else by TFLiteConverter."""
        params = self.config
        if rules is not None:
            flatbuffer = rules.write(rules.choices)
            check_written(flatbuffer, keras_model, rules.choices, rules.io, where)
            path.write_bytes(flatbuffer)
            return
        path.write_bytes(convert_saved(keras_model, params.mode, calibration, where) if source is ModelFormat.SAVED_MODEL
                         else convert(keras_model, params.mode, calibration, sparse=False))

    def fall_back(self, keras_model: Any, rules: Plan | None, calibration: Any, path: Path, data: Any, ctx: StageContext,
                  ) -> tuple[Fallback, dict[str, Choice]]:
        """The budget's fallback, when on: among precisions for a file the quantizer wrote, else float-or-int8;
        and each layer's final Choice (none without rules)."""
        params, where = self.config, f"stages.{ctx.name}"
        final = rules.reported(rules.choices) if rules is not None else {}
        if params.fallback != "auto":
            return Fallback(), final
        if rules is None:
            return fall_back(keras_model, calibration, path, params.accuracy_tolerance, data, ctx.budget, where, ctx.log), final
        return precision_fallback.fall_back(
            rules, path, params.accuracy_tolerance, data, ctx.budget, params.fallback_steps, params.fallback_max_latency_ms, ctx.log,
            params.fallback_error_by,
        )

    def run(self, model: ModelArtifact | None, ctx: StageContext) -> ModelArtifact:
        assert model is not None  # guaranteed by `accepts`
        params = self.config
        where = f"stages.{ctx.name}"
        data = ctx.data
        if model.format is ModelFormat.SAVED_MODEL:  # a serving signature takes what it was saved to take
            keras_model, serving = model.load_model(), contract("preprocessed", "logits")
        else:
            keras_model, data, serving = for_serving(model.load_keras(), data, params, params.mode in CALIBRATED, ctx.log)
        calibration = calibration_set(data.x_train, params.calibration_samples, ctx.seed)
        path = ctx.workdir / "model.tflite"
        rules = plan(keras_model, params.mode, params.precision, params.weights, calibration, where) if params.mixed else None
        self.write(keras_model, model.format, rules, calibration, path, where)
        asked_float = [name for name, choice in rules.reported(rules.choices).items() if choice.precision == "float"] if rules else []
        # XNNPACK's sparse kernels are floating-point only: a sparse-encoded integer model came out
        # larger and did not run, so `auto` does not spend a second conversion finding that out.
        worth_trying = Effect.PRUNED in model.effects and params.mode in FLOAT_MODES
        sparse = sparse_encoding(keras_model, params.keep_sparsity, params.mode, worth_trying, calibration, path, where, ctx.log)
        metadata: dict[str, Any] = {
            **model.metadata, "quantization": params.mode, "sparse_encoding": sparse, "serving": serving,
            "calibration_samples": len(calibration) if params.mode in CALIBRATED else 0,
        }
        fallen, final = self.fall_back(keras_model, rules, calibration, path, data, ctx)
        if final:
            metadata["layer_precisions"] = {name: choice.words for name, choice in final.items()}
        metadata.update(fallen.facts)
        gates = apply_gates(
            params, params.mode == "int8", keras_model, path, data, where, fallen.float_layers, ctx.log, fallen.accuracies,
            self.accuracy_remedies(where), asked_float,
        )
        metadata.update(gates.facts)
        return ModelArtifact(
            path, ModelFormat.TFLITE, ctx.name, model, metadata, self.output_effects(model),
            metrics=fallen.metrics, gate=gates.accuracies, reports=fallen.reports,
        )
