"""Quantization-aware training with TFMOT: which layers train quantization-aware under each scheme
(plain, or keeping sparsity and clusters), the wrapped model, and its activation ranges."""

from __future__ import annotations

import functools
import re
from collections.abc import Collection, Sequence
from typing import Any

from pipeline.run.layer_plan import Action
from techniques import qat_int4


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


def quantize_aware(
    keras_model: Any, scheme: str, keep_float: Sequence[str] = (), four_bit: Collection[str] = ()
) -> tuple[Any, dict[str, str]]:
    """`keras_model` with the layers TFMOT supports trained quantization-aware under `scheme`.

    TFMOT's "quantize some layers" pattern: supported layers are annotated, the others stay float
    in the Keras model, and the converter quantizes them from the calibration data. Returns the
    model and the layers left out, with their types.

    Layers named in `keep_float` (the accuracy fallback's choice) are annotated with a configuration
    that quantizes nothing (not their weights, not their outputs), so they train in float; the
    converter must then be told to keep them float too (`fallback.float_kept`). Left un-annotated
    instead, TFMOT would still fake-quantize the output of any that feeds a quantized layer.

    Layers named in `four_bit` train with their kernel on the int4 grid ai-edge-quantizer writes
    (`qat_int4.four_bit_config`; under pqat their zeros stay zero).
    """
    import tensorflow_model_optimization as tfmot
    import tf_keras as keras

    quantization = tfmot.quantization.keras
    actions = annotation(keras_model, scheme)
    aware_names = {name for name, action in actions.items() if action.kind == AWARE}
    float_config, four_bit_config = unquantized_config(), qat_int4.four_bit_config()

    def annotate(layer: Any) -> Any:
        if layer.name in keep_float:
            return quantization.quantize_annotate_layer(layer, quantize_config=float_config())
        if layer.name in four_bit and layer.name in aware_names:
            return quantization.quantize_annotate_layer(layer, quantize_config=four_bit_config(keep_zeros=scheme == "pqat"))
        return quantization.quantize_annotate_layer(layer) if layer.name in aware_names else layer

    while True:
        annotated = keras.models.clone_model(keras_model, clone_function=annotate)
        try:
            with quantization.quantize_scope({float_config.__name__: float_config, four_bit_config.__name__: four_bit_config}):
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
