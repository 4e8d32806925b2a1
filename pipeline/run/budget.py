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
else the run fails naming the stage that lost it. Both speak the task's primary metric
(pipeline.measure.tasks): points of accuracy or micro-F1, or for regression a relative increase
of MAE (0.02: 2% more error). Nothing here imports TensorFlow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pipeline.errors import PipelineError
from pipeline.measure.tasks import Task, task_named

if TYPE_CHECKING:
    from pipeline.config.settings import BudgetParams

# Accuracies are shares of a finite split: a tie with the floor must count as meeting it.
EPSILON = 1e-9


@dataclass(frozen=True)
class Budget:
    """The budget as one stage sees it.

    `reference` is the validation score (the task's primary metric: accuracy, MAE, micro-F1) of the
    first trained model, `available` that of this stage's input; `spent` lists what each earlier
    stage lost (negative when it gained), in the task's terms (points, or relative for MAE).
    """

    reference: float
    reference_stage: str
    allowed_drop: float
    available: float
    spent: tuple[tuple[str, float], ...] = ()
    task: str = "classification"

    @property
    def metric(self) -> Task:
        """The task whose primary metric the budget is kept in."""
        return task_named(self.task)

    @property
    def floor(self) -> float:
        """The worst validation score the pipeline may hand on (for MAE a ceiling: the highest error)."""
        return self.metric.limit(self.reference, self.allowed_drop)

    @property
    def remaining(self) -> float:
        """How much this stage may still lose, in the primary metric's unit (negative once overspent)."""
        return self.available - self.floor if self.metric.higher_is_better else self.floor - self.available

    def meets(self, score: float) -> bool:
        """Whether a model of this validation score stays within the budget."""
        return score >= self.floor - EPSILON if self.metric.higher_is_better else score <= self.floor + EPSILON

    def as_metadata(self) -> dict[str, Any]:
        """The budget as plain data, for the export metadata."""
        found = {
            "split": "validation",
            "reference_stage": self.reference_stage,
            "reference_accuracy": self.reference,
            "accuracy_drop": self.allowed_drop,
            "floor": self.floor,
            "spent": dict(self.spent),
        }
        if self.task != "classification":
            found.update(metric=self.metric.val_primary, relative=self.metric.relative)
        return found


@dataclass
class Ledger:
    """The runner's books: each stage's validation accuracy and what it spent of the budget."""

    allowed_drop: float
    accuracies: dict[str, float] = field(default_factory=dict)  # each stage's validation score
    label: str = "accuracy budget"  # or "safety net", for a run with no budget
    task: str = "classification"

    def record(self, stage: str, accuracy: float) -> dict[str, float]:
        """Note `stage`'s validation score (as the runner measured it); what it spent, to log."""
        previous = list(self.accuracies.values())[-1] if self.accuracies else accuracy
        self.accuracies[stage] = accuracy
        return {"budget_spent": self.spending(previous, accuracy)}

    def spending(self, before: float, after: float) -> float:
        """What going from score `before` to `after` spent: points, or relative to the reference for MAE."""
        task = task_named(self.task)
        reference = next(iter(self.accuracies.values()), before)
        return task.drop(reference, after) - task.drop(reference, before)

    def budget(self) -> Budget | None:
        """The budget the next stage works under; None before the first model exists."""
        if not self.accuracies:
            return None
        names, values = list(self.accuracies), list(self.accuracies.values())
        spent = tuple((names[i], self.spending(values[i - 1], values[i])) for i in range(1, len(names)))
        return Budget(values[0], names[0], self.allowed_drop, values[-1], spent, self.task)

    def totals(self) -> dict[str, float]:
        """Run-level numbers for MLflow: the reference, the allowance, what was spent and what is left."""
        budget = self.budget()
        if budget is None:
            return {}
        return {
            "budget_reference_accuracy": budget.reference,
            "budget_accuracy_drop": budget.allowed_drop,
            "budget_spent": budget.metric.drop(budget.reference, budget.available),
            "budget_remaining": budget.remaining,
        }

    def table(self) -> str:
        """What each stage spent, as a Markdown table."""
        budget = self.budget()
        if budget is None:
            return ""
        spent, task = dict(budget.spent), budget.metric
        title = "accuracy" if task.name == "classification" else task.primary
        allowance = f"{task.describe(budget.allowed_drop)} {task.worse_word}" if task.relative else (
            f"{budget.allowed_drop:.4f} {task.worse_word}"
        )
        lines = [
            (
                f"{self.label}: {allowance} {budget.reference:.4f} "
                f"(validation {title} of '{budget.reference_stage}'), {'floor' if task.higher_is_better else 'ceiling'} "
                f"{budget.floor:.4f}"
            ),
            "",
            f"| stage | val {title} | spent | left |",
            "|---|---:|---:|---:|",
        ]
        for stage, score in self.accuracies.items():
            left = score - budget.floor if task.higher_is_better else budget.floor - score
            lines.append(f"| {stage} | {score:.4f} | {spent.get(stage, 0.0):+.4f} | {left:+.4f} |")
        return "\n".join(lines)


def check_shipped(ledger: Ledger, params: BudgetParams) -> None:
    """The safety net: raise PipelineError if the last model lost more validation accuracy against
    the reference than `params.margin()`, naming the stage that lost the most and what to change."""
    budget = ledger.budget()
    margin = params.margin(task_named(ledger.task).relative)
    if margin is None or budget is None or not budget.spent:
        return
    task = budget.metric
    loss = task.drop(budget.reference, budget.available)
    if math.isnan(loss) or loss <= margin + EPSILON:
        return
    stage, lost = max(budget.spent, key=lambda item: item[1])
    allowed = "budget.accuracy_drop" if params.accuracy_drop is not None else "the safety net (budget.safety_net)"
    title = "accuracy" if task.name == "classification" else task.primary
    raise PipelineError(
        f"stages.{stage}: the shipped model's validation {title} {budget.available:.4f} is {task.describe(loss)} "
        f"{task.worse_word} the first trained model's {budget.reference:.4f} ('{budget.reference_stage}'), more than "
        f"{allowed} allows ({task.describe(margin)}); '{stage}' lost {task.describe(lost)}. Nothing was registered; change "
        f"that stage's settings, allow more with budget.accuracy_drop, or ship it anyway with budget.safety_net=null"
    )


def points(share: float) -> str:
    """An accuracy difference in percentage points, e.g. '62.47 points'."""
    return f"{share * 100:.2f} points"
