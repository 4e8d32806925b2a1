"""qat: quantization-aware fine-tuning, plain or collaborative (keeping sparsity and clusters), to int8 TFLite."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Literal

from pydantic import Field

from pipeline.artifact import STRUCTURAL, Effect, ModelArtifact, ModelFormat
from pipeline.errors import PipelineError
from pipeline.layer_plan import Action, LayerPlan, StagePlan
from pipeline.stage import StageContext
from stages._fallback import (
    Fallback,
    FallbackParams,
    FallbackStage,
    fall_back,
    float_kept,
)
from stages._gates import GateParams, apply_gates
from stages._layers import require_layer_graph
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


class QuantizeAwareStage(FallbackStage[QuantizeAwareParams]):
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

    def accuracy_remedies(self, where: str) -> list[str]:
        """This stage already trains quantization-aware: longer fine-tuning, and the float fallback when it is off."""
        return [f"fine-tune longer ({where}.epochs, now {self.config.epochs})", *super().accuracy_remedies(where)]

    def layer_plan(self, model: Any, earlier: LayerPlan, where: str) -> StagePlan:
        """Which layers train quantization-aware and which are only calibrated at conversion (and why)."""
        require_layer_graph(model, where)
        scheme = chosen_scheme(self.config.scheme, earlier.effects)
        actions = annotation(model, scheme)
        calibrated = [name for name, action in actions.items() if action.kind != AWARE]
        return StagePlan(
            actions, f"scheme {scheme}, then full-integer int8; calibrated only: {', '.join(calibrated) or 'none'}{self.fallback_note()}"
        )

    def run(self, model: ModelArtifact | None, ctx: StageContext) -> ModelArtifact:
        from stages.quantize import QuantizeParams, calibration_set, convert

        assert model is not None  # guaranteed by `accepts`
        params: QuantizeAwareParams = self.config
        where = f"stages.{ctx.name}"
        self.check_input(model.format, model.effects, where)  # also when called without a checked recipe
        scheme = chosen_scheme(params.scheme, model.effects)
        conversion = QuantizeParams(mode="int8", calibration_samples=params.calibration_samples, keep_sparsity="false")
        settling = calibration_set(ctx, conversion)  # training inputs, as the model trains on them
        aware, calibrated = self.tuned(model, scheme, settling, ctx)
        served, serving_ctx, serving = for_serving(aware, ctx, params, integer=True)
        calibration = calibration_set(serving_ctx, conversion)  # as the converted model takes them
        path = ctx.workdir / "model.tflite"
        path.write_bytes(convert(served, conversion, calibration, sparse=False))
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
                return serving_model(keras_model, ctx.data.preprocessing, serving["inputs"], params.outputs)

            candidate = functools.partial(self.candidate, model, scheme, settling, ctx, serve, calibration)
            fallen = fall_back(serve(model.load_keras()), calibration, path, params.accuracy_tolerance, serving_ctx, candidate)
        metadata.update(fallen.facts)
        # The gate compares with the fine-tuned model, not the float one the fallback measured: only
        # the shipped file's accuracy is known already.
        known = {"tflite_accuracy": fallen.accuracies["tflite_accuracy"]} if fallen.accuracies else None
        gates = apply_gates(
            params, True, served, path, serving_ctx.data, where, fallen.float_layers, ctx.log, known, self.accuracy_remedies(where)
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
        compile_model(aware, self.config)
        fit(aware, ctx, self.config)
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


def settle_ranges(aware: Any, calibration: Any, rounds: int = 3) -> None:
    """Start the activation ranges at the calibration data's, not at TFMOT's [-6, 6].

    TFMOT moves each activation range towards the batch's by 0.1% per training step (an EMA
    with decay 0.999, no bias correction), so a fine-tune of a few hundred steps converts with
    ranges still near their start and loses accuracy to coarse steps. One training-mode pass
    over a calibration batch updates each moving range once per call of its layer (a shared
    layer: several times) as `new = 0.999 * old + 0.001 * batch`; solving for the value those
    updates converge to and assigning it sets the range at once. Weight ranges (last-value
    quantizers) are assigned directly by every pass and recognised by not changing on a repeat.
    """
    import numpy as np

    calls = {id(v): max(1, len(layer.inbound_nodes)) for layer in aware.layers for v in layer.non_trainable_variables}
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
            decay = 0.999 ** calls.get(id(ranges[i]), 1)
            ranges[i].assign((after[i] - decay * before[i]) / (1 - decay))


AWARE = "quantization-aware"


def scheme_of(name: str) -> Any:
    """TFMOT's quantization scheme for `name`, restricted to the layers its configs can quantize."""
    from pipeline.private_api import quantize_scheme

    return _Supported(quantize_scheme(name))


class _Supported:
    """A quantization scheme whose registry supports only layers the default 8-bit configs can quantize.

    The collaborative schemes' registries claim every layer without trainable weights but take
    their configs from the default registry, which refuses many of them (Resizing, RandomFlip):
    `quantize_apply` would fail on such a layer when it feeds an annotated one, instead of
    leaving it to conversion.
    """

    def __init__(self, scheme: Any):
        from pipeline.private_api import default_8bit_registry

        self.scheme, self.registry = scheme, scheme.get_quantize_registry()
        self.default = default_8bit_registry()

    def get_layout_transformer(self) -> Any:
        return self.scheme.get_layout_transformer()

    def get_quantize_registry(self) -> Any:
        return self

    def supports(self, layer: Any) -> bool:
        return self.registry.supports(layer) and self.default.supports(layer)

    def get_quantize_config(self, layer: Any) -> Any:
        return self.registry.get_quantize_config(layer)


def annotation(model: Any, scheme: str) -> dict[str, Action]:
    """`quantization-aware` for each layer the scheme supports; `calibrated` with the reason for the rest.

    BatchNormalization counts as supported after a Conv2D, DepthwiseConv2D or Dense with no
    activation: TFMOT's transforms fold those pairs.
    """
    import tf_keras as keras

    registry = scheme_of(scheme)
    folded = folded_batch_norms(model)
    actions = {}
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        supported = registry.supports(layer) or layer.name in folded
        actions[layer.name] = Action(AWARE) if supported else Action("calibrated", f"no TFMOT support for {type(layer).__name__}")
    return actions


def folded_batch_norms(model: Any) -> set[str]:
    """Names of the BatchNormalization layers that directly follow a linear Conv2D, DepthwiseConv2D or Dense.

    Read from the model's own graph: a layer object may also belong to other graphs (the nested
    model it was flattened from).
    """
    import tf_keras as keras

    linear = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense)
    found = set()
    from pipeline.private_api import nodes_by_depth

    for nodes in nodes_by_depth(model).values():
        for node in nodes:
            before = node.inbound_layers
            is_batch_norm = isinstance(node.layer, keras.layers.BatchNormalization)
            if is_batch_norm and isinstance(before, linear) and before.get_config().get("activation") == "linear":
                found.add(node.layer.name)
    return found


def quantize_aware(keras_model: Any, scheme: str, keep_float: Sequence[str] = ()) -> tuple[Any, dict[str, str]]:
    """`keras_model` with the layers TFMOT supports trained quantization-aware under `scheme`.

    TFMOT's "quantize some layers" pattern: supported layers are annotated, the others stay float
    in the Keras model, and the converter quantizes them from the calibration data. Returns the
    model and the layers left out, with their types.

    Layers named in `keep_float` (the accuracy fallback's choice) are annotated with a configuration
    that quantizes nothing (not their weights, not their outputs), so they train in float; the
    converter must then be told to keep them float too (`_fallback.float_kept`). Left un-annotated
    instead, TFMOT would still fake-quantize the output of any that feeds a quantized layer.
    """
    import tensorflow_model_optimization as tfmot
    import tf_keras as keras

    quantization = tfmot.quantization.keras
    actions = annotation(keras_model, scheme)
    aware_names = {name for name, action in actions.items() if action.kind == AWARE}
    float_config = unquantized_config()

    def annotate(layer: Any) -> Any:
        if layer.name in keep_float:
            return quantization.quantize_annotate_layer(layer, quantize_config=float_config())
        return quantization.quantize_annotate_layer(layer) if layer.name in aware_names else layer

    while True:
        annotated = keras.models.clone_model(keras_model, clone_function=annotate)
        try:
            with quantization.quantize_scope({float_config.__name__: float_config}):
                aware = quantization.quantize_apply(annotated, scheme_of(scheme))
            break
        except RuntimeError as error:  # a layer TFMOT's transforms did not take after all: leave it out
            refused = re.match(r"Layer (\S+?):", str(error))
            if refused is None or refused.group(1) not in aware_names:
                raise
            aware_names.discard(refused.group(1))
    return aware, {name: type(keras_model.get_layer(name)).__name__ for name in actions if name not in aware_names}


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
