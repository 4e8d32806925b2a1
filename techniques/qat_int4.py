"""Quantization-aware training with 4-bit weights: which layers train on the int4 grid, TFMOT's
configuration for them, and the float model the trained weights go back into for ai-edge-quantizer.

The 4-bit grid trained on is the grid ai-edge-quantizer writes (see `four_bit_quantizer`), so the
written file computes with the weights the fine-tune settled on.
"""

from __future__ import annotations

import functools
from collections.abc import Collection, Mapping
from typing import Any

from pipeline.run.layer_plan import Action

# Keras layers whose kernel trains on the 4-bit grid: ai-edge-quantizer writes int4 weights
# channelwise for their ops (CONV_2D, FULLY_CONNECTED) and refuses it for DEPTHWISE_CONV_2D.
FOUR_BIT_TYPES = ("Dense", "Conv2D")
# The schemes whose weight quantizer takes a bit width; the cluster-preserving ones are not wired for it here.
FOUR_BIT_SCHEMES = ("default", "pqat")


def four_bit_layers(model: Any, asked: Mapping[str, str], aware: Collection[str]) -> tuple[set[str], dict[str, str]]:
    """The layers that train with 4-bit weights, and for each other layer asked int4, why it stays 8-bit.

    `asked` is each layer's weight type (layer name -> int4/int8), `aware` the layers TFMOT trains
    quantization-aware. A layer whose output goes straight into a BatchNormalization or a ReLU layer
    stays 8-bit: TFMOT's transforms for those pairs replace the layer's configuration (the batch
    normalization is folded into the weights only when the file is written, so the grid trained on
    would not be the written one; before a ReLU layer TFMOT does not quantize the weights at all).
    """
    followed = fused_followers(model)
    chosen: set[str] = set()
    kept: dict[str, str] = {}
    for layer in model.layers:
        name, kind = layer.name, type(layer).__name__
        if asked.get(name) != "int4" or not layer.weights:
            continue
        if kind not in FOUR_BIT_TYPES:
            kept[name] = f"ai-edge-quantizer writes int4 weights for {' and '.join(FOUR_BIT_TYPES)} only"
        elif name not in aware:
            kept[name] = "TFMOT does not train it quantization-aware"
        elif name in followed:
            kept[name] = f"TFMOT fuses it with the {followed[name]} after it"
        else:
            chosen.add(name)
    return chosen, kept


def fused_followers(model: Any) -> dict[str, str]:
    """Layer name -> type of the BatchNormalization or ReLU that directly follows it in `model`'s graph."""
    import tf_keras as keras

    from pipeline.private_api import nodes_by_depth

    found = {}
    for nodes in nodes_by_depth(model).values():
        for node in nodes:
            before, layer = node.inbound_layers, node.layer
            relu = isinstance(layer, keras.layers.ReLU) or (
                isinstance(layer, keras.layers.Activation) and layer.get_config().get("activation") == "relu"
            )
            if isinstance(before, keras.layers.Layer) and (relu or isinstance(layer, keras.layers.BatchNormalization)):
                found[before.name] = type(layer).__name__
    return found


def plan_actions(actions: dict[str, Action], chosen: Collection[str], kept: Mapping[str, str]) -> dict[str, Action]:
    """The qat layer plan's actions with the weight type said: `int4 weights` where the layer trains
    on the 4-bit grid, `int8 weights` with the reason where int4 was asked but cannot be trained."""
    said = dict(actions)
    for name in chosen:
        said[name] = Action(f"{actions[name].kind}, int4 weights")
    for name, why in kept.items():
        said[name] = Action(f"{actions[name].kind}, int8 weights", why)
    return said


def four_bit_quantizer(keep_zeros: bool) -> Any:
    """TFMOT's weight quantizer on ai-edge-quantizer's int4 channelwise grid (zeros kept for pqat).

    ai-edge-quantizer (uniform_quantize_tensor) takes each output channel's scale as max|w| / 7
    (symmetric, qmax = 7, zero point 0) and rounds w / scale to the nearest integer (np.rint), clipped
    to [-8, 7]: since |w| / scale <= 7, the levels used are -7..7. TFMOT's LastValueQuantizer with
    symmetric=True and narrow_range=True sets each channel's range to [-max|w|, max|w|] and fake-quantizes
    on 2^4 - 1 = 15 levels from 1 to 15 with the zero point at 8: the same scale, max|w| / 7, and the
    same levels. With narrow_range=False TFMOT widens the range by 8/7 on the side opposite the largest
    weight and uses 16 levels, so a channel whose largest weight is negative trains on max|w| / 8 steps:
    another grid. The two differ only in how an exact tie (w / scale = k + 0.5) rounds, which a trained
    float weight essentially never hits.
    """
    from tensorflow_model_optimization.quantization.keras import quantizers

    from pipeline.private_api import prune_preserving_quantizer

    if keep_zeros:
        return prune_preserving_quantizer(num_bits=4, per_axis=True, symmetric=True, narrow_range=True)
    return quantizers.LastValueQuantizer(num_bits=4, per_axis=True, symmetric=True, narrow_range=True)


@functools.cache
def four_bit_config() -> type:
    """TFMOT's QuantizeConfig for a Dense or Conv2D layer (8-bit activations as the default scheme's),
    with the kernel on the 4-bit grid of `four_bit_quantizer`.

    A class of its own, so that `quantize_apply`'s clone of the annotated model rebuilds it with its
    4-bit quantizer (TFMOT's default config does not serialize its quantizers). Made on first use so
    that TFMOT is imported only when quantization-aware training runs.
    """
    from pipeline.private_api import default_8bit_config_class

    base: Any = default_8bit_config_class()

    class FourBitWeights(base):
        """The default 8-bit configuration of a layer with a kernel, but the kernel on 4 bits per channel."""

        def __init__(self, keep_zeros: bool = False, **config: Any):
            config = {"weight_attrs": ["kernel"], "activation_attrs": ["activation"], "quantize_output": False, **config}
            super().__init__(**config)
            self.keep_zeros = keep_zeros
            self.weight_quantizer = four_bit_quantizer(keep_zeros)

        def get_config(self) -> dict:
            return {**super().get_config(), "keep_zeros": self.keep_zeros}

    return FourBitWeights


def float_twin(original: Any, aware: Any) -> Any:
    """`original` (the model before quantization-aware wrapping) holding the fine-tuned weights of `aware`.

    ai-edge-quantizer rewrites a float model: it gets this one, whose kernels are the float values
    the fake quantizers rounded in training, so that it rounds them to the same int4 levels. Every
    layer's weights are copied (batch-normalization statistics and layers TFMOT left float trained too).
    """
    trained: dict[str, dict[str, Any]] = {}
    for layer in aware.layers:
        # A QuantizeWrapper holds its layer's variables (under the layer's name) beside its quantizers' own.
        inner = layer.layer if type(layer).__name__.startswith("QuantizeWrapper") else layer
        trained.setdefault(inner.name, {}).update(
            {attribute(v): v for v in layer.weights if v.name.startswith(f"{inner.name}/")}
        )
    for layer in original.layers:
        if layer.weights:
            layer.set_weights([trained[layer.name][attribute(v)].numpy() for v in layer.weights])
    return original


def attribute(variable: Any) -> str:
    """The layer attribute a variable holds (`kernel`, `moving_mean`), from its name `layer/kernel:0`."""
    return variable.name.rsplit("/", 1)[-1].split(":")[0]
