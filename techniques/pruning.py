"""TFMOT magnitude pruning: when the masks are updated, to what sparsity, and checks that each layer got there."""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.errors import PipelineError
from techniques.layers import is_kernel, kernel_sizes

# Why a layer stays dense under an m:n pattern: groups of n run along its input channels.
NARROW = "input channels not a multiple of"
# Measured sparsity may differ from the target by rounding within each layer.
SPARSITY_TOLERANCE = 0.02


def mask_schedule(ramp_fraction: float, frequency: int | None, total_steps: int) -> tuple[int, int]:
    """(end_step, frequency) such that the last mask update lands inside training.

    TFMOT updates masks only on steps where `step % frequency == 0` up to `end_step`; if
    `end_step` is not such a step, or lies beyond the last step, the target is never reached.
    `frequency` None: about 10 updates over the ramp.
    """
    ramp = max(1, int(ramp_fraction * (total_steps - 1)))
    frequency = frequency or max(1, ramp // 10)
    frequency = min(frequency, ramp)
    return (ramp // frequency) * frequency, frequency


def pruning_schedule(schedule: str, initial: float, final: float, end_step: int, frequency: int) -> Any:
    """TFMOT's schedule object reaching `final` sparsity at `end_step` (see `mask_schedule`): a
    `polynomial` ramp from `initial`, or `constant`."""
    import tensorflow_model_optimization as tfmot

    sparsity = tfmot.sparsity.keras
    if schedule == "polynomial":
        return sparsity.PolynomialDecay(min(initial, final), final, 0, end_step, frequency=frequency)
    return sparsity.ConstantSparsity(final, 0, end_step, frequency=frequency)


def check_sparsity(model: Any, targets: dict[str, float], m_by_n: list[int] | None, stage: str) -> float:
    """The pruned layers' sparsity; PipelineError unless each reached its target (and the m:n pattern, when asked for)."""
    for name, target in targets.items():
        achieved = pruned_sparsity(model, [name])
        # A layer's zeros are a whole number: a tiny layer may land one weight off its share.
        if abs(achieved - target) > max(SPARSITY_TOLERANCE, 1 / max(1, kernel_sizes(model.get_layer(name)))):
            raise PipelineError(
                f"stages.{stage}: layer {name} reached {achieved:.1%} sparsity instead of {target:.1%}; "
                f"raise stages.{stage}.epochs or lower stages.{stage}.frequency"
            )
    names = list(targets)
    achieved = pruned_sparsity(model, names)
    if m_by_n:
        broken = [n for n in names if not follows_m_by_n(model.get_layer(n).get_weights()[0], m_by_n)]
        if broken:
            raise PipelineError(
                f"stages.{stage}: layers {', '.join(broken)} miss the {m_by_n[0]}:{m_by_n[1]} pattern; "
                f"raise stages.{stage}.epochs or lower stages.{stage}.frequency"
            )
    return achieved


def follows_m_by_n(kernel: np.ndarray, m_by_n: list[int]) -> bool:
    """Whether every group of n consecutive input-channel weights holds at least m zeros."""
    m, n = m_by_n
    groups = np.moveaxis(kernel, -2, -1).reshape(-1, n)
    return bool(((groups == 0).sum(axis=1) >= m).all())


def pruned_sparsity(model: Any, names: list[str] | None = None) -> float:
    """Share of zeros in the kernels (weights of rank 2 or more, not biases) of the named layers (default: every layer)."""
    kernels = [
        weight.numpy() for layer in model.layers if names is None or layer.name in names
        for weight in layer.weights if is_kernel(weight)
    ]
    total = sum(k.size for k in kernels)
    return float(sum(k.size - np.count_nonzero(k) for k in kernels) / total) if total else 0.0


def magnitude_pruned(kernel: np.ndarray, sparsity: float) -> np.ndarray:
    """`kernel` with its smallest-magnitude `sparsity` share of weights set to zero."""
    count = round(sparsity * kernel.size)
    flat = kernel.flatten()
    if count:
        flat[np.argpartition(np.abs(flat), count - 1)[:count]] = 0
    return flat.reshape(kernel.shape)
