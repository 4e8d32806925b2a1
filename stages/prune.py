"""prune: TFMOT magnitude pruning with fine-tuning, stripped before hand-off."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field, model_validator

from pipeline.artifact import ModelArtifact
from pipeline.errors import PipelineError
from pipeline.stage import Stage, StageContext
from stages._training import FitParams, compile_model, fit, save_keras, steps_per_epoch

# Measured sparsity may differ from the target by rounding within each layer.
SPARSITY_TOLERANCE = 0.02


class PruneParams(FitParams):
    """Parameters of the prune stage."""

    final_sparsity: float = Field(0.5, ge=0, lt=1, description="Share of each pruned layer's weights set to zero.")
    initial_sparsity: float = Field(0.0, ge=0, lt=1, description="Sparsity at the start of a polynomial schedule.")
    schedule: Literal["polynomial", "constant"] = Field(
        "polynomial", description="polynomial ramps sparsity up; constant prunes to the target at once."
    )
    epochs: int = Field(4, ge=1, le=10_000, description="Fine-tuning passes over the training split.")
    learning_rate: float = Field(5e-4, gt=0, le=10, description="Fine-tuning optimizer step size.")
    ramp_fraction: float = Field(
        0.7, gt=0, le=1,
        description="Share of fine-tuning steps over which sparsity reaches its target; the rest recovers accuracy.",
    )
    frequency: int | None = Field(
        None, ge=1, description="Steps between mask updates; default: about 10 updates over the ramp."
    )

    @model_validator(mode="after")
    def _ramps_up(self) -> PruneParams:
        if self.initial_sparsity > self.final_sparsity:
            raise ValueError("initial_sparsity must not exceed final_sparsity")
        return self


def mask_schedule(params: PruneParams, total_steps: int) -> tuple[int, int]:
    """(end_step, frequency) such that the last mask update lands inside training.

    TFMOT updates masks only on steps where `step % frequency == 0` up to `end_step`; if
    `end_step` is not such a step, or lies beyond the last step, the target is never reached.
    """
    ramp = max(1, int(params.ramp_fraction * (total_steps - 1)))
    frequency = params.frequency or max(1, ramp // 10)
    if frequency > ramp:
        frequency = ramp
    return (ramp // frequency) * frequency, frequency


class PruneStage(Stage):
    """Magnitude pruning to `final_sparsity` with a polynomial or constant schedule."""

    Config: ClassVar = PruneParams

    def run(self, model: ModelArtifact | None, ctx: StageContext) -> ModelArtifact:
        import tensorflow_model_optimization as tfmot

        assert model is not None  # guaranteed by `accepts`
        params: PruneParams = self.config
        end_step, frequency = mask_schedule(params, params.epochs * steps_per_epoch(ctx, params))
        sparsity = tfmot.sparsity.keras
        if params.schedule == "polynomial":
            schedule = sparsity.PolynomialDecay(
                params.initial_sparsity, params.final_sparsity, 0, end_step, frequency=frequency
            )
        else:
            schedule = sparsity.ConstantSparsity(params.final_sparsity, 0, end_step, frequency=frequency)
        ctx.log.info("    pruning to %.0f%% by step %d, mask update every %d steps", 100 * params.final_sparsity, end_step, frequency)

        pruned = sparsity.prune_low_magnitude(model.load_keras(), pruning_schedule=schedule)
        compile_model(pruned, params)
        fit(pruned, ctx, params, callbacks=[sparsity.UpdatePruningStep()])
        stripped = sparsity.strip_pruning(pruned)
        achieved = pruned_sparsity(stripped)
        if abs(achieved - params.final_sparsity) > SPARSITY_TOLERANCE:
            raise PipelineError(
                f"stages.{ctx.name}: reached {achieved:.1%} sparsity instead of {params.final_sparsity:.1%}; "
                f"raise stages.{ctx.name}.epochs or lower stages.{ctx.name}.frequency"
            )
        return save_keras(stripped, ctx, model, pruned=True, target_sparsity=params.final_sparsity)


def pruned_sparsity(model: Any) -> float:
    """Share of zeros in the kernels of layers TFMOT prunes by default (Dense, Conv)."""
    kernels = [layer.kernel.numpy() for layer in model.layers if hasattr(layer, "kernel")]
    total = sum(k.size for k in kernels)
    return float(sum(k.size - np.count_nonzero(k) for k in kernels) / total) if total else 0.0
