"""A per-layer sparsity plan from measured sensitivities: the tolerant layers pruned harder, the
overall sparsity the same. Also the measurements themselves, and the sensitivity table and plot a person reads.

Each layer was pruned alone, one-shot, to a few sparsities and the validation accuracy measured.
The plan starts with every layer dense and repeatedly raises the layer whose next step zeroes the
most weights per point of accuracy it costs, until the layers together reach the target; the last
step is cut short so the target is met exactly. Costs of several layers are taken to add up, and
one-shot drops are larger than what fine-tuning leaves: the plan ranks, the budget is checked on
the pruned, fine-tuned model.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from techniques.pruning import magnitude_pruned

# A tiny cost per unit of sparsity: among layers whose measured drops are equal (often zero), the
# larger layer is raised first, since it zeroes more weights per step.
TIE_BREAK = 1e-6


@dataclass(frozen=True)
class LayerSensitivity:
    """One prunable layer: its size and the validation accuracy with it alone pruned to each sparsity."""

    name: str
    kind: str
    size: int
    accuracy: dict[float, float]
    int8_error: float | None = None
    planned: float = field(default=0.0, compare=False)
    # ai-edge-quantizer's validation of the layer quantized alone: SNR (power ratio) and MSE.
    quantizer_snr: float | None = None
    quantizer_mse: float | None = None


def measure_layers(
    keras_model: Any, layers: list[Any], sparsities: list[float], x: np.ndarray, y: np.ndarray, log: logging.Logger,
    score: Callable[[np.ndarray, np.ndarray], float] | None = None,
) -> tuple[float, list[LayerSensitivity]]:
    """The unpruned validation score, and each layer's score with it alone pruned to each sparsity; `score`
    (outputs, labels) is the task's primary metric, accuracy by default."""
    from pipeline.measure.metrics import batched, hits, keras_predict

    score = score or hits
    forward, logits = keras_predict(keras_model, x)  # reads the weights when called: one trace serves every trial
    base = score(logits, y)

    def accuracy() -> float:
        return score(batched(forward, x), y)

    measured = []
    for index, layer in enumerate(layers, 1):
        kernel = layer.kernel.numpy()
        found = {}
        for sparsity in sparsities:
            layer.kernel.assign(magnitude_pruned(kernel, sparsity))
            found[sparsity] = accuracy()
        layer.kernel.assign(kernel)
        log.info(
            "    [%d/%d] %s: %s", index, len(layers), layer.name,
            ", ".join(f"{s:.0%} -> {a:.4f}" for s, a in found.items()),
        )
        measured.append(LayerSensitivity(layer.name, type(layer).__name__, kernel.size, found))
    return base, measured


def plan(layers: Sequence[LayerSensitivity], base: float, target: float, higher_is_better: bool = True) -> dict[str, float]:
    """Layer name -> sparsity such that the weighted overall sparsity is `target`."""
    levels = sorted({s for layer in layers for s in layer.accuracy})
    if not layers or target > levels[-1]:
        raise ValueError(f"target sparsity {target} is above the highest sparsity measured ({levels[-1] if levels else None})")
    drops = {layer.name: cumulative_drops(layer, levels, base, higher_is_better) for layer in layers}
    step = {layer.name: 0 for layer in layers}  # how many levels each layer has been raised
    need, zeros = target * sum(layer.size for layer in layers), 0.0
    share = {layer.name: 0.0 for layer in layers}
    while zeros < need - 1e-9:
        layer, gained = cheapest_step(layers, levels, drops, step)
        step[layer.name] += 1
        share[layer.name] = levels[step[layer.name] - 1]
        zeros += gained
        if zeros > need:  # cut the last step short: exactly the target
            share[layer.name] -= (zeros - need) / layer.size
    return {name: round(value, 4) for name, value in share.items()}


def cumulative_drops(layer: LayerSensitivity, levels: list[float], base: float, higher_is_better: bool = True) -> list[float]:
    """Score lost at each level (accuracy lost, or error gained), never falling as sparsity rises (the
    measurements are noisy)."""
    drops, worst = [0.0], 0.0
    sign = 1.0 if higher_is_better else -1.0
    for level in levels:
        worst = max(worst, sign * (base - layer.accuracy.get(level, base)))
        drops.append(worst)
    return drops


def cheapest_step(
    layers: Sequence[LayerSensitivity], levels: list[float], drops: dict[str, list[float]], step: dict[str, int]
) -> tuple[LayerSensitivity, float]:
    """The layer whose next level costs least accuracy per weight zeroed, and how many it zeroes."""
    best, best_cost, best_gain = None, float("inf"), 0.0
    for layer in layers:
        index = step[layer.name]
        if index == len(levels):
            continue
        before = levels[index - 1] if index else 0.0
        gained = layer.size * (levels[index] - before)
        cost = (drops[layer.name][index + 1] - drops[layer.name][index] + TIE_BREAK * (levels[index] - before)) / gained
        if cost < best_cost:
            best, best_cost, best_gain = layer, cost, gained
    assert best is not None  # the target is at most the highest level, so a step remains
    return best, best_gain


def table(layers: Sequence[LayerSensitivity], base: float, examples: int, target: float) -> str:
    """The sensitivities, int8 errors and plan as a Markdown table."""
    levels = sorted({s for layer in layers for s in layer.accuracy})
    by_quantizer = any(layer.quantizer_snr is not None for layer in layers)
    extra = " int8 SNR | int8 MSE |" if by_quantizer else ""
    lines = [
        f"validation accuracy unpruned: {base:.4f} ({examples} examples); plan: {target:.0%} overall",
        "",
        "| layer | type | weights | " + " | ".join(f"acc @{level:.0%}" for level in levels) + f" | int8 error |{extra} planned |",
        "|---|---|---:|" + "---:|" * len(levels) + "---:|" + "---:|---:|" * by_quantizer + "---:|",
    ]
    for layer in layers:
        error = "-" if layer.int8_error is None else f"{layer.int8_error:.3g}"
        accuracies = " | ".join(f"{layer.accuracy[level]:.4f}" for level in levels)
        if by_quantizer:
            error += " | " + " | ".join("-" if v is None else f"{v:.3g}" for v in (layer.quantizer_snr, layer.quantizer_mse))
        lines.append(f"| {layer.name} | {layer.kind} | {layer.size:,} | {accuracies} | {error} | {layer.planned:.1%} |")
    return "\n".join(lines)


def plot(layers: Sequence[LayerSensitivity], base: float, path: Path) -> Path:
    """Validation accuracy against sparsity, one line per layer, the planned sparsity marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    for layer in layers:
        levels = sorted(layer.accuracy)
        (line,) = ax.plot([0.0, *levels], [base, *(layer.accuracy[s] for s in levels)], marker="o", label=f"{layer.name} ({layer.size:,})")
        ax.axvline(layer.planned, color=line.get_color(), linestyle=":", linewidth=1)
    ax.set_xlabel("sparsity of the layer alone (one-shot magnitude pruning); dotted: planned")
    ax.set_ylabel("validation accuracy")
    ax.set_title("Per-layer pruning sensitivity")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
