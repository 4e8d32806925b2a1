"""sensitivity: how much each layer tolerates pruning (and int8), measured on the validation split, and a
per-layer sparsity plan for `prune` (`final_sparsity: plan`).

Each prunable layer is pruned alone, one-shot by weight magnitude, to each of a few sparsities,
and the model's validation accuracy measured; no training, so the whole table costs one
validation pass per layer and sparsity. The stage hands its input model on unchanged, with the
plan in its metadata, and writes the table (sensitivity.md), a plot (sensitivity.png) and the
plan (sparsity_plan.json) beside it; the runner logs them to MLflow.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from typing import Any, Literal

from pydantic import Field, model_validator

from pipeline.errors import PipelineError
from pipeline.plugin.artifact import Effect, ModelArtifact
from pipeline.plugin.stage import Stage, StageContext
from pipeline.private_api import prunable
from pipeline.run.layer_plan import Action, LayerPlan, StagePlan
from techniques import sparsity_plan as planning
from techniques.conversion import CALIBRATION_SAMPLES, calibration_set
from techniques.fallback import RANKING_EXAMPLES
from techniques.layers import LayerChoice, acted_on, choose_layers, left_alone
from techniques.mixed_precision import plan
from techniques.quant_debug import int8_errors
from techniques.quantizer_errors import layer_errors

REPORTS = ("sensitivity.md", "sensitivity.png", "sparsity_plan.json")
MEASURED = "measured"


class SensitivityParams(LayerChoice):
    """Parameters of the sensitivity stage."""

    sparsities: list[float] = Field(
        default_factory=lambda: [0.5, 0.7, 0.8, 0.9, 0.95], min_length=1,
        description="Sparsities each layer is pruned to, alone and one-shot, to measure its validation accuracy.",
    )
    target_sparsity: float = Field(
        0.8, gt=0, lt=1,
        description="Overall share of zeros among the chosen layers' weights the plan reaches (prune takes it with final_sparsity: plan).",
    )
    int8_error: bool = Field(True, description="Also measure each layer's int8 error (noise-to-signal ratio of its quantized output).")
    int8_error_by: Literal["own", "quantizer"] = Field(
        "own",
        description=(
            "own: the noise-to-signal ratio of each layer's quantized output, fed the quantized input; quantizer: "
            "ai-edge-quantizer's validation of each layer quantized alone (SNR and MSE columns; the int8 error "
            "is 1/sqrt(SNR)). The two agree within a few percent on convolutions and dense layers."
        ),
    )
    max_examples: int | None = Field(None, ge=10, description="Validation examples measured (null: the whole validation split).")

    @model_validator(mode="after")
    def _reachable(self) -> SensitivityParams:
        if any(not 0 < s < 1 for s in self.sparsities):
            raise ValueError("sparsities must lie between 0 and 1, e.g. [0.5, 0.8, 0.9]")
        if self.target_sparsity > max(self.sparsities):
            raise ValueError(f"target_sparsity {self.target_sparsity} is above the highest of sparsities; add a higher one")
        return self


class SensitivityStage(Stage[SensitivityParams]):
    """Per-layer pruning sensitivity and int8 error on the validation split, and a sparsity plan."""

    def effects_after(self, incoming: frozenset[Effect]) -> frozenset[Effect]:
        """The model is unchanged; it now carries a sparsity plan."""
        return incoming | {Effect.SPARSITY_PLANNED}

    def layer_plan(self, model: Any, earlier: LayerPlan, where: str) -> StagePlan:
        """Which layers are measured (and which not, and why), before any training."""
        actions = self.choose(model, where)
        return StagePlan(
            actions,
            f"measures each layer pruned to {', '.join(f'{s:.0%}' for s in sorted(set(self.config.sparsities)))} on the "
            f"validation split; plans {self.config.target_sparsity:.0%} overall for prune; not measured: "
            f"{left_alone(model, actions, MEASURED)}",
        )

    def choose(self, model: Any, where: str) -> dict[str, Action]:
        """`measured` for every chosen layer prune can prune by its kernel, else `unmeasured` and why."""

        def why_not(layer: Any) -> str | None:
            if not prunable(layer):
                return "not prunable"
            return None if hasattr(layer, "kernel") else "no kernel"

        return choose_layers(model, self.config, why_not, where, MEASURED, "unmeasured")

    def check_settings(self, settings: Any, where: str) -> None:
        if settings.data.get("val_fraction") == 0:
            raise PipelineError(
                f"{where}: sensitivities are measured on the validation split, which data.val_fraction=0 leaves "
                f"empty; set data.val_fraction (e.g. 0.1)"
            )

    def run(self, model: ModelArtifact | None, ctx: StageContext) -> ModelArtifact:
        assert model is not None  # guaranteed by `accepts`
        params = self.config
        where = f"stages.{ctx.name}"
        x, y = ctx.data.x_val, ctx.data.y_val[: params.max_examples]
        if params.max_examples is not None:  # else the whole split, streamed through each trial when it streams
            x = x[: params.max_examples]
        if not len(x):
            raise PipelineError(f"{where}: the validation split is empty; set data.val_fraction (e.g. 0.1)")
        keras_model = model.load_keras()
        layers = [keras_model.get_layer(name) for name in acted_on(self.choose(keras_model, where), MEASURED)]
        from pipeline.measure.metrics import primary_score
        from pipeline.measure.tasks import task_named

        task = task_named(ctx.data.task)
        base, measured = planning.measure_layers(
            keras_model, layers, sorted(set(params.sparsities)), x, y, ctx.log, lambda out, labels: primary_score(out, labels, ctx.data)
        )
        measured = self.int8_errors(keras_model, measured, ctx)
        shares = planning.plan(measured, base, params.target_sparsity, task.higher_is_better)
        measured = [dataclasses.replace(layer, planned=shares[layer.name]) for layer in measured]
        self.write(measured, base, len(x), shares, ctx)
        path = ctx.workdir / model.path.name
        copy = shutil.copytree if model.path.is_dir() else shutil.copyfile
        copy(model.path, path)  # handed on unchanged, kept with the stage's own files
        metadata = {
            **model.metadata, "sparsity_plan": shares, "sparsity_plan_target": params.target_sparsity,
            "sparsity_plan_stage": ctx.name,
        }
        return ModelArtifact(
            path, model.format, ctx.name, model, metadata, self.output_effects(model),
            metrics={"base_val_accuracy": base, "planned_sparsity": params.target_sparsity}, reports=REPORTS,
        )

    def int8_errors(
        self, keras_model: Any, measured: list[planning.LayerSensitivity], ctx: StageContext
    ) -> list[planning.LayerSensitivity]:
        """`measured` with each layer's int8 error, on the validation split, calibrated on the training split
        as quantize does; by our own measure or by ai-edge-quantizer's validation (`int8_error_by`)."""
        if not self.config.int8_error:
            return measured
        calibration = calibration_set(ctx.data.x_train, CALIBRATION_SAMPLES, ctx.seed)
        x = ctx.data.x_val[:RANKING_EXAMPLES]
        if self.config.int8_error_by == "own":
            errors = int8_errors(keras_model, calibration, x)
            return [dataclasses.replace(layer, int8_error=errors.get(layer.name)) for layer in measured]
        found = layer_errors(plan(keras_model, "int8", {}, "int8", calibration, f"stages.{ctx.name}"), x)
        return [
            dataclasses.replace(layer, int8_error=e.noise_to_signal, quantizer_snr=e.snr, quantizer_mse=e.mse) if e else layer
            for layer, e in ((layer, found.get(layer.name)) for layer in measured)
        ]

    def write(
        self, measured: list[planning.LayerSensitivity], base: float, examples: int, shares: dict[str, float], ctx: StageContext
    ) -> None:
        """The table (also logged), the plot and the plan, in the stage's folder."""
        text = planning.table(measured, base, examples, self.config.target_sparsity)
        (ctx.workdir / REPORTS[0]).write_text(text + "\n")
        planning.plot(measured, base, ctx.workdir / REPORTS[1])
        plan = {"target_sparsity": self.config.target_sparsity, "layers": shares}
        (ctx.workdir / REPORTS[2]).write_text(json.dumps(plan, indent=2) + "\n")
        ctx.log.info("    sensitivity (validation split):\n%s", text)


