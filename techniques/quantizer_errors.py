"""Each layer's quantization error as ai-edge-quantizer's validation measures it (SNR and MSE).

The quantizer's `validate` compares every tensor of a quantized model with the float model's, fed the
same input, so a tensor's error there is everything quantized before it. To make that a layer's own
error, each layer is quantized alone (the rest float) and its output compared: the number then
holds the layer's weights and output rounding and the rounding of its input, which is what the
quantized layer adds in the shipped model. `quant_debug.layer_errors` measures the same thing
its own way (a float copy of each op fed the quantized input); tests check that the two agree.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from techniques.mixed_precision import Choice, Plan, quiet, signature_samples


@dataclass(frozen=True)
class LayerError:
    """A layer's error alone: the quantizer's SNR (signal power over noise power, mean over examples) and
    MSE of its worst output, and the noise-to-signal ratio they imply (1/sqrt(SNR), as `quant_debug` reports)."""

    snr: float
    mse: float

    @property
    def noise_to_signal(self) -> float:
        """sqrt(noise power / signal power): 0 is exact, 1 means the output is lost."""
        return float(1 / np.sqrt(self.snr)) if self.snr > 0 else float("inf")


def layer_errors(rules: Plan, x: np.ndarray, precision: str = "int8", weights: str = "int8") -> dict[str, LayerError]:
    """Each layer's error alone in `precision` with `weights` on examples `x`, by the quantizer's validation."""
    choice = Choice(precision, weights, "sensitivity", "sensitivity")
    samples = signature_samples(rules.float_model, x)
    found = {layer: layer_error(rules, layer, choice, samples) for layer in layer_outputs(rules)}
    return {layer: error for layer, error in found.items() if error is not None}


def layer_outputs(rules: Plan) -> dict[str, list[str]]:
    """Layer -> the output tensor names of its ops in the float model."""
    outputs: dict[str, list[str]] = {}
    for node, _, layer in rules.ops:
        if layer is not None:
            outputs.setdefault(layer, []).append(node)
    return outputs


def layer_error(rules: Plan, layer: str, choice: Choice, samples: dict[str, list[dict[str, np.ndarray]]]) -> LayerError | None:
    """Layer `layer`'s error alone as `choice` on `samples` (as `signature_samples` gives them): the
    quantizer's SNR and MSE of its worst output, every other layer float; None when the
    quantizer's validation reports none of its outputs."""
    from ai_edge_quantizer import model_validator
    from ai_edge_quantizer.utils.validation_utils import ValidationErrorMetric

    float_choice = Choice("float", "int8", "sensitivity", "sensitivity")
    outputs = layer_outputs(rules)
    quantized = rules.write({**dict.fromkeys(outputs, float_choice), layer: choice}, float_choice)
    with quiet():
        compared = model_validator.compare_model(
            rules.float_model, quantized, samples, [ValidationErrorMetric.MSE, ValidationErrorMetric.SNR],
            use_xnnpack=False, num_threads=1,
        ).get_all_tensor_results()
    worst = min((compared[node] for node in outputs.get(layer, []) if node in compared), key=lambda r: r["snr"], default=None)
    return None if worst is None else LayerError(float(worst["snr"]), float(worst["mse"]))
