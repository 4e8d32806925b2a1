"""The schemas of a recipe's top-level keys: `measure`, `tracking`, `budget` and the whole run.

Checked with the rest of the recipe, before TensorFlow is imported; the runner, the measurements
and the MLflow writer read them without importing the recipe checker.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from pipeline.measure.tasks import TASK_HELP, TaskName
from pipeline.plugin.schema import Params

# The default safety net. The shipped recipes, at their own epochs on the default digits data, lose
# from the first trained model to the export between -1.1 and +1.1 points of validation accuracy, and
# smallest_mnist (tuned for MNIST) 3.9 (one validation example is 0.56 points there). Five points
# passes them all and still stops a broken conversion, which loses tens of points.
SAFETY_NET = 0.05
# For a relative metric (MAE) a broken conversion multiplies the error; a short fine-tune of a pruned
# regressor raised it by a third on a 300-row table. Half as much error again still stops the former.
RELATIVE_SAFETY_NET = 0.5


class BudgetParams(Params):
    """The recipe-level accuracy budget (config key `budget`)."""

    accuracy_drop: float | None = Field(
        None, ge=0, le=1,
        description=(
            "Most validation accuracy the whole pipeline may lose against the first trained model "
            "(0.01 = one point; for task=regression the relative increase of MAE, 0.01 = 1% more error; for "
            "task=multilabel points of micro-F1); the stages that choose (fallback, planned sparsity) stay within it; null: no budget."
        ),
    )
    safety_net: float | Literal["auto"] | None = Field(
        "auto",
        description=(
            "Without accuracy_drop: most validation accuracy the shipped model may lose against the first trained "
            "model before the run fails (0.05 = five points; for task=regression a relative MAE increase); auto: "
            f"{SAFETY_NET} ({RELATIVE_SAFETY_NET} for regression's relative MAE); null: no such check (opt out), "
            "with or without a budget."
        ),
    )

    @field_validator("safety_net")
    @classmethod
    def _share(cls, value: float | str | None) -> float | str | None:
        if isinstance(value, float) and not 0 <= value <= 1:
            raise ValueError("must be between 0 and 1, auto or null")
        return value

    def margin(self, relative: bool = False) -> float | None:
        """The largest loss the shipped model may show: the budget's, else the safety net's (`relative`:
        for a metric whose losses are relative, where `auto` is wider); None: unchecked."""
        if self.safety_net is None:
            return None
        if self.accuracy_drop is not None:
            return self.accuracy_drop
        if self.safety_net == "auto":
            return RELATIVE_SAFETY_NET if relative else SAFETY_NET
        return float(self.safety_net)


class MeasureParams(Params):
    """How the runner measures each stage's output."""

    latency_runs: int = Field(50, ge=1, description="Timed invocations at batch 1 after warm-up.")
    warmup_runs: int = Field(5, ge=0, description="Untimed invocations before timing.")
    threads: int = Field(1, ge=1, description="TFLite interpreter threads for latency and accuracy.")


class TrackingParams(Params):
    """Where runs are recorded."""

    uri: str = Field(description="MLflow tracking URI, e.g. sqlite:///outputs/mlflow.db or http://127.0.0.1:5000.")
    experiment: str = Field("pipeline", min_length=1, description="MLflow experiment name.")
    register_as: str | None = Field(
        None, min_length=1,
        description="Register the shipped model as a new version of this MLflow registered model (null: do not).",
    )


class RunSettings(Params):
    """Top level of a composed config; `data`, `model` and `stages` are checked by their plugins."""

    seed: int = Field(42, ge=0, description="Seed for data splits, weight initialisation and shuffling.")
    task: TaskName = Field("classification", description=TASK_HELP)
    outputs: str = Field("outputs", description="Folder for run directories, the stage cache and the local MLflow store.")
    cache: bool = Field(True, description="Reuse stage outputs whose inputs and settings are unchanged.")
    objectives: list[str] = Field(
        default_factory=lambda: ["val_accuracy"],
        description="Final-stage metrics the run returns to a sweeper, e.g. [val_accuracy, gzip_bytes].",
    )
    description: str = Field("", description="One line saying what the recipe does.")
    measure: MeasureParams = Field(default_factory=MeasureParams)
    budget: BudgetParams = Field(default_factory=BudgetParams)
    tracking: TrackingParams
    data: dict[str, Any] = Field(description="Data source config (config group `data`).")
    model: dict[str, Any] = Field(description="Model config (config group `model`).")
    device: dict[str, Any] = Field(default_factory=dict, description="Device, strategy and precision (config group `device`).")
    stages: dict[str, Any] = Field(description="Ordered mapping of stage name to parameters.")
