"""One accuracy budget for the whole recipe: how much validation accuracy the pipeline may spend.

`budget.accuracy_drop: 0.01` lets the finished model be at most one point less accurate, on the
validation split, than the first trained model (the reference: the first stage's output, or the
saved model a recipe that trains nothing starts from). The runner keeps the books: after
every stage it reads the validation accuracy it measured (`val_accuracy`, the same number a
search steers by) and records what the stage spent; each stage gets the state of the budget in
its context (`ctx.budget`), the stages that choose by themselves (which layers stay float, how
hard each layer is pruned) keep the model above the floor, and the runner stops a run whose
choosing stage did not. Stages that do as they are told (train, channel_prune, prune with given
sparsities) spend without choosing; the books show what.

Every run also has a safety net: the shipped model may not lose more validation accuracy
against the first trained model than `accuracy_drop`, or `safety_net` when no budget is set,
else the run fails naming the stage that lost it. Nothing here imports TensorFlow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pipeline.errors import PipelineError

if TYPE_CHECKING:
    from pipeline.config.settings import BudgetParams

# Accuracies are shares of a finite split: a tie with the floor must count as meeting it.
EPSILON = 1e-9


@dataclass(frozen=True)
class Budget:
    """The budget as one stage sees it.

    `reference` is the validation accuracy of the first trained model, `available` that of this
    stage's input; `spent` lists what each earlier stage lost (negative when it gained).
    """

    reference: float
    reference_stage: str
    allowed_drop: float
    available: float
    spent: tuple[tuple[str, float], ...] = ()

    @property
    def floor(self) -> float:
        """The lowest validation accuracy the pipeline may hand on."""
        return self.reference - self.allowed_drop

    @property
    def remaining(self) -> float:
        """How much accuracy this stage may still lose (negative once overspent)."""
        return self.available - self.floor

    def meets(self, accuracy: float) -> bool:
        """Whether a model of this validation accuracy stays within the budget."""
        return accuracy >= self.floor - EPSILON

    def as_metadata(self) -> dict[str, Any]:
        """The budget as plain data, for the export metadata."""
        return {
            "split": "validation",
            "reference_stage": self.reference_stage,
            "reference_accuracy": self.reference,
            "accuracy_drop": self.allowed_drop,
            "floor": self.floor,
            "spent": dict(self.spent),
        }


@dataclass
class Ledger:
    """The runner's books: each stage's validation accuracy and what it spent of the budget."""

    allowed_drop: float
    accuracies: dict[str, float] = field(default_factory=dict)
    label: str = "accuracy budget"  # or "safety net", for a run with no budget

    def record(self, stage: str, accuracy: float) -> dict[str, float]:
        """Note `stage`'s validation accuracy (as the runner measured it); what it spent, to log."""
        previous = list(self.accuracies.values())[-1] if self.accuracies else accuracy
        self.accuracies[stage] = accuracy
        return {"budget_spent": previous - accuracy}

    def budget(self) -> Budget | None:
        """The budget the next stage works under; None before the first model exists."""
        if not self.accuracies:
            return None
        names, values = list(self.accuracies), list(self.accuracies.values())
        spent = tuple((names[i], values[i - 1] - values[i]) for i in range(1, len(names)))
        return Budget(values[0], names[0], self.allowed_drop, values[-1], spent)

    def totals(self) -> dict[str, float]:
        """Run-level numbers for MLflow: the reference, the allowance, what was spent and what is left."""
        budget = self.budget()
        if budget is None:
            return {}
        return {
            "budget_reference_accuracy": budget.reference,
            "budget_accuracy_drop": budget.allowed_drop,
            "budget_spent": budget.reference - budget.available,
            "budget_remaining": budget.remaining,
        }

    def table(self) -> str:
        """What each stage spent, as a Markdown table."""
        budget = self.budget()
        if budget is None:
            return ""
        spent = dict(budget.spent)
        lines = [
            (
                f"{self.label}: {budget.allowed_drop:.4f} below {budget.reference:.4f} "
                f"(validation accuracy of '{budget.reference_stage}'), floor {budget.floor:.4f}"
            ),
            "",
            "| stage | val accuracy | spent | left |",
            "|---|---:|---:|---:|",
        ]
        for stage, accuracy in self.accuracies.items():
            lines.append(f"| {stage} | {accuracy:.4f} | {spent.get(stage, 0.0):+.4f} | {accuracy - budget.floor:+.4f} |")
        return "\n".join(lines)


def check_shipped(ledger: Ledger, params: BudgetParams) -> None:
    """The safety net: raise PipelineError if the last model lost more validation accuracy against
    the reference than `params.margin()`, naming the stage that lost the most and what to change."""
    margin = params.margin()
    budget = ledger.budget()
    if margin is None or budget is None or not budget.spent:
        return
    loss = budget.reference - budget.available
    if math.isnan(loss) or loss <= margin + EPSILON:
        return
    stage, lost = max(budget.spent, key=lambda item: item[1])
    allowed = "budget.accuracy_drop" if params.accuracy_drop is not None else "the safety net (budget.safety_net)"
    raise PipelineError(
        f"stages.{stage}: the shipped model's validation accuracy {budget.available:.4f} is {points(loss)} below the first "
        f"trained model's {budget.reference:.4f} ('{budget.reference_stage}'), more than {allowed} allows ({points(margin)}); "
        f"'{stage}' lost {points(lost)}. Nothing was registered; change that stage's settings, allow more with "
        f"budget.accuracy_drop, or ship it anyway with budget.safety_net=null"
    )


def points(share: float) -> str:
    """An accuracy difference in percentage points, e.g. '62.47 points'."""
    return f"{share * 100:.2f} points"
