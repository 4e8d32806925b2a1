"""What a model is asked to do, and everything that follows from it: head, loss, metrics and their direction.

Three tasks: `classification` (one class per example: softmax over logits, accuracy), `regression`
(values in their own unit: a linear head trained on standardised targets, MAE/RMSE/R²) and
`multilabel` (several 0/1 labels per example: a sigmoid per label, micro-F1 at a threshold chosen on
the validation split, macro-F1, ROC-AUC). Each task has one primary metric with a direction; the
runner's table, MLflow, the budget, the safety net and the search objectives read it from here.
Nothing here imports TensorFlow at module level: the recipe check uses it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:  # NumPy is imported where it computes: the MLflow helper reads the settings without it
    import numpy as np

TaskName = Literal["classification", "regression", "multilabel"]
TASK_HELP = (
    "classification: one class per example (accuracy); regression: a value per example in its own unit "
    "(MAE, RMSE, R²); multilabel: several 0/1 label columns (micro-F1, macro-F1, ROC-AUC)."
)

# Thresholds tried on the validation split for multi-label outputs (sigmoid probabilities).
THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(1, 20))


@dataclass(frozen=True)
class Task:
    """One task's head, loss, metrics and how a loss of quality is told.

    `metrics` are measured on every split (the first is the primary one); `higher_is_better` is the
    primary metric's direction; `relative` says a drop is a relative change (MAE: 0.02 = 2% more
    error) rather than a difference in points (accuracy, F1: 0.01 = one point).
    """

    name: str
    metrics: tuple[str, ...]
    higher_is_better: bool
    relative: bool
    activation: str  # of the served head: softmax, linear (values) or sigmoid
    titles: tuple[str, ...]  # table column titles, one per metric

    @property
    def primary(self) -> str:
        """The metric the budget, the safety net and the default search objective read."""
        return self.metrics[0]

    def test_key(self, metric: str) -> str:
        """The measurement's name for `metric` on the test split (`accuracy` keeps its historic name)."""
        return "accuracy" if self.name == "classification" and metric == "accuracy" else f"test_{metric}"

    @staticmethod
    def val_key(metric: str) -> str:
        """The measurement's name for `metric` on the validation split."""
        return f"val_{metric}"

    @property
    def val_primary(self) -> str:
        """`val_accuracy`, `val_mae` or `val_micro_f1`: what choices are made on."""
        return self.val_key(self.primary)

    def measurement_names(self) -> tuple[str, ...]:
        """Every measurement name this task adds to a stage's metrics."""
        names = [name for metric in self.metrics for name in (self.test_key(metric), self.val_key(metric))]
        return (*names, "threshold") if self.name == "multilabel" else tuple(names)

    def drop(self, reference: float, value: float) -> float:
        """How much worse `value` is than `reference` (negative when better): points, or a relative change."""
        worse = reference - value if self.higher_is_better else value - reference
        return worse / abs(reference) if self.relative and reference else worse

    def limit(self, reference: float, allowed: float) -> float:
        """The worst value of the primary metric within `allowed` of `reference` (a floor or, for MAE, a ceiling)."""
        change = allowed * abs(reference) if self.relative else allowed
        return reference - change if self.higher_is_better else reference + change

    def meets(self, value: float, limit: float, epsilon: float = 1e-9) -> bool:
        """Whether `value` is no worse than `limit` (a tie counts as meeting it)."""
        return value >= limit - epsilon if self.higher_is_better else value <= limit + epsilon

    def strictest(self, limits: list[float]) -> float:
        """The hardest of several limits to meet: the highest floor, or the lowest MAE ceiling."""
        return max(limits) if self.higher_is_better else min(limits)

    @property
    def limit_word(self) -> str:
        """What the worst allowed value is called: a floor (accuracy, F1) or a ceiling (MAE)."""
        return "floor" if self.higher_is_better else "ceiling"

    @property
    def title(self) -> str:
        """The primary metric as messages name it: accuracy, mae, micro_f1."""
        return self.primary

    def describe(self, amount: float) -> str:
        """A drop as people read it: '1.20 points' or '3.4% (relative)'."""
        return f"{amount * 100:.1f}% (relative)" if self.relative else f"{amount * 100:.2f} points"

    @property
    def worse_word(self) -> str:
        """How a worse value lies from a better one: 'below' (accuracy, F1) or 'above' (MAE)."""
        return "below" if self.higher_is_better else "above"

    def evaluate(self, outputs: np.ndarray, labels: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
        """Every metric of this task from model outputs (logits, or values in the labels' unit) and labels."""
        import numpy as np

        if len(labels) == 0:
            return {metric: float("nan") for metric in self.metrics}
        return EVALUATORS[self.name](np.asarray(outputs), np.asarray(labels), threshold)

    def keras_loss(self) -> Any:
        """The training loss on the model's raw outputs (logits, or standardised values)."""
        import tf_keras as keras

        if self.name == "regression":
            return keras.losses.MeanSquaredError()
        if self.name == "multilabel":
            return keras.losses.BinaryCrossentropy(from_logits=True)
        return keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def keras_metrics(self) -> list[Any]:
        """The metric Keras shows per epoch (on standardised values for regression)."""
        import tf_keras as keras

        if self.name == "regression":
            return [keras.metrics.MeanAbsoluteError(name="mae")]
        if self.name == "multilabel":
            return [keras.metrics.BinaryAccuracy(name="accuracy", threshold=0.0)]  # logits: 0 is probability 0.5
        return ["accuracy"]


def hits(logits: np.ndarray, labels: np.ndarray) -> float:
    """Share of examples whose highest output is the label."""
    import numpy as np

    return float(np.mean(np.argmax(logits, axis=-1) == labels))


def classification_metrics(outputs: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, float]:
    """Accuracy of the highest output."""
    return {"accuracy": hits(outputs, labels)}


def regression_metrics(outputs: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, float]:
    """MAE, RMSE and R² of values in the labels' unit."""
    import numpy as np

    predicted, truth = outputs.reshape(len(labels), -1)[:, 0].astype(np.float64), labels.astype(np.float64)
    error = predicted - truth
    spread = float(np.sum((truth - truth.mean()) ** 2))
    return {
        "mae": float(np.mean(np.abs(error))),
        "rmse": float(np.sqrt(np.mean(error**2))),
        "r2": 1.0 - float(np.sum(error**2)) / spread if spread > 0 else float("nan"),
    }


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Per-label probabilities of logits."""
    import numpy as np

    return 1.0 / (1.0 + np.exp(-np.clip(logits.astype(np.float64), -60, 60)))


def f1_counts(true_pos: np.ndarray, false_pos: np.ndarray, false_neg: np.ndarray) -> np.ndarray:
    """F1 from counts; 0 where a label is never predicted nor present (nothing to find)."""
    import numpy as np

    denominator = 2 * true_pos + false_pos + false_neg
    return np.divide(2 * true_pos, denominator, out=np.zeros_like(denominator, dtype=np.float64), where=denominator > 0)


def f1_scores(probabilities: np.ndarray, labels: np.ndarray, threshold: float) -> tuple[float, float]:
    """Micro- and macro-F1 of the labels predicted at `threshold`."""
    import numpy as np

    predicted, truth = probabilities >= threshold, labels >= 0.5
    true_pos = (predicted & truth).sum(axis=0).astype(np.float64)
    false_pos = (predicted & ~truth).sum(axis=0).astype(np.float64)
    false_neg = (~predicted & truth).sum(axis=0).astype(np.float64)
    micro = f1_counts(true_pos.sum(), false_pos.sum(), false_neg.sum())
    return float(micro), float(np.mean(f1_counts(true_pos, false_pos, false_neg)))


def roc_auc(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Mean ROC-AUC over the labels that have both positive and negative examples (NaN when none has)."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    scored = [j for j in range(labels.shape[1]) if 0 < labels[:, j].sum() < len(labels)]
    if not scored:
        return float("nan")
    return float(np.mean([roc_auc_score(labels[:, j] >= 0.5, probabilities[:, j]) for j in scored]))


def multilabel_metrics(outputs: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, float]:
    """Micro-F1 and macro-F1 at `threshold` and ROC-AUC, from logits."""
    probabilities = sigmoid(outputs)
    micro, macro = f1_scores(probabilities, labels, threshold)
    return {"micro_f1": micro, "macro_f1": macro, "roc_auc": roc_auc(probabilities, labels)}


def best_threshold(logits: np.ndarray, labels: np.ndarray) -> float:
    """The probability threshold with the highest micro-F1 on (validation) `logits`; 0.5 without examples."""
    import numpy as np

    if len(labels) == 0:
        return 0.5
    probabilities = sigmoid(logits)
    scores = [f1_scores(probabilities, labels, float(t))[0] for t in THRESHOLDS]
    return THRESHOLDS[int(np.argmax(scores))]


EVALUATORS = {
    "classification": classification_metrics,
    "regression": regression_metrics,
    "multilabel": multilabel_metrics,
}

TASKS: Mapping[str, Task] = {
    "classification": Task("classification", ("accuracy",), True, False, "softmax", ("accuracy",)),
    "regression": Task("regression", ("mae", "rmse", "r2"), False, True, "linear", ("MAE", "RMSE", "R²")),
    "multilabel": Task(
        "multilabel", ("micro_f1", "macro_f1", "roc_auc"), True, False, "sigmoid", ("micro-F1", "macro-F1", "AUC")
    ),
}


def served_outputs(asked: str, task: str) -> str:
    """What a served (converted or exported) model gives for `task`: values in the labels' unit for
    regression, whatever was asked; else the asked logits or probabilities."""
    return "values" if task == "regression" else asked


def task_named(name: str) -> Task:
    """The Task called `name` (validated by the config schema before this is called)."""
    return TASKS[name]
