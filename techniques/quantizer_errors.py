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
    from ai_edge_quantizer import model_validator
    from ai_edge_quantizer.utils.validation_utils import ValidationErrorMetric

    float_choice = Choice("float", "int8", "sensitivity", "sensitivity")
    outputs: dict[str, list[str]] = {}
    for node, _, layer in rules.ops:
        if layer is not None:
            outputs.setdefault(layer, []).append(node)
    samples = signature_samples(rules.float_model, x)
    found: dict[str, LayerError] = {}
    for layer, nodes in outputs.items():
        alone = {**dict.fromkeys(outputs, float_choice), layer: Choice(precision, weights, "sensitivity", "sensitivity")}
        quantized = rules.write(alone, float_choice)
        with quiet():
            compared = model_validator.compare_model(
                rules.float_model, quantized, samples, [ValidationErrorMetric.MSE, ValidationErrorMetric.SNR],
                use_xnnpack=False, num_threads=1,
            ).get_all_tensor_results()
        worst = min((compared[node] for node in nodes if node in compared), key=lambda r: r["snr"], default=None)
        if worst is not None:
            found[layer] = LayerError(float(worst["snr"]), float(worst["mse"]))
    return found
