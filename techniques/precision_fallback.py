"""The budget's fallback among precisions: for the layer that hurts most, the cheapest step up that holds.

When a file written by ai-edge-quantizer misses the accuracy floor on the validation split, each
layer can climb a ladder of steps, cheapest first: int4 weights -> int8 weights -> int16 activations
-> float (the steps a stage allows). The layers are ranked by the error each one alone adds to the
logits at its current step (the model quantized with only that layer, the rest and the input and
output float; the noise-to-signal ratio of the logits against the float model's), the worst first.
For that layer every allowed step is tried in order, and the first one whose model meets the floor
wins; when none does, the layer keeps the cheapest step that raised the validation accuracy most
(or stays as it was when none raised it) and the next layer is ranked; each layer climbs once. Each try's size, p50
latency (batch 1, one thread) and validation accuracy go to the table: int16 is slow on CPU, and a
step over the latency limit is refused.

The error of a layer alone does not depend on the other layers' steps, so each (layer, step) is
measured once. With `error_by="quantizer"` the ranking takes ai-edge-quantizer's validation instead:
the noise-to-signal ratio (1/sqrt(SNR)) of the layer's own output, quantized alone
(`quantizer_errors.layer_error`), not of the logits.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.errors import PipelineError
from pipeline.measure.tasks import TASKS, Task, task_named
from pipeline.run.budget import EPSILON
from pipeline.run.summary import human_bytes
from techniques.fallback import Fallback
from techniques.mixed_precision import Choice, Plan, check_written

if TYPE_CHECKING:
    from pipeline.run.budget import Budget

# (precision, weights) from cheapest to most precise, and the step name a stage allows each by.
LADDER = (("int8", "int4"), ("int8", "int8"), ("int16", "int8"), ("float", "int8"))
STEP_NAMES = {("int8", "int4"): "int4", ("int8", "int8"): "int8", ("int16", "int8"): "int16", ("float", "int8"): "float"}
# Validation examples the ranking errors are measured on, as the int8 fallback ranks.
RANKING_EXAMPLES = 256
LATENCY_RUNS, LATENCY_WARMUP = 50, 5


@dataclass(frozen=True)
class Trial:
    """One model the search measured: the layer it moved, the step, and what that cost and bought."""

    layer: str
    step: str
    error: float
    size_bytes: int
    latency_ms: float
    val_accuracy: float
    refused: bool


@dataclass(frozen=True)
class Outcome:
    """What the search chose: each layer's Choice, every trial, the model bytes and its validation accuracy."""

    choices: dict[str, Choice]
    trials: list[Trial]
    flatbuffer: bytes
    val_accuracy: float


def steps_after(choice: Choice, allowed: Sequence[str], weighted: bool) -> list[Choice]:
    """The allowed steps above `choice` on the ladder, cheapest first. A layer without weights has
    no weights to widen, so it skips the int8-weights step."""
    here = (choice.precision, choice.weights)
    start = LADDER.index(here) + 1 if here in LADDER else LADDER.index(("int16", "int8"))  # int16 with int4 weights
    return [
        replace(choice, precision=precision, weights=weights)
        for precision, weights in LADDER[start:]
        if STEP_NAMES[(precision, weights)] in allowed and (weighted or (precision, weights) != ("int8", "int8"))
    ]


def search(
    rules: Plan, start: Mapping[str, Choice], accuracy: float, data: Any, floor: float, allowed: Sequence[str],
    max_latency_ms: float | None, log: logging.Logger, error_by: str = "own",
) -> Outcome:
    """Climb the ladder layer by layer until the model `rules` writes meets `floor`; `start` holds each
    layer's Choice as the rules give it, and `accuracy` that model's validation accuracy. Layers are
    ranked by `error_by`: `own` (the logits' error) or `quantizer` (its validation of the layer's output)."""
    where = rules.where
    errors: dict[tuple[str, str, str], float] = {}
    measure_alone = ErrorAlone(rules, start, data.x_val[:RANKING_EXAMPLES], error_by)

    def alone(layer: str, choice: Choice) -> float:
        key = (layer, choice.precision, choice.weights)
        if key not in errors:
            errors[key] = measure_alone(layer, choice)
        return errors[key]

    current: dict[str, Choice] = dict(start)
    trials: list[Trial] = []
    stuck: set[str] = set()
    while True:
        movable = [layer for layer in current if layer not in stuck and steps_after(current[layer], allowed, layer in rules.weighted)]
        if not movable:
            break
        worst = max(movable, key=lambda layer: alone(layer, current[layer]))
        steps = steps_after(current[worst], allowed, worst in rules.weighted)
        error = alone(worst, current[worst])
        kept, outcome = climb(rules, current, worst, steps, error, accuracy, data, floor, max_latency_ms, trials, log)
        if outcome is not None:
            return outcome
        stuck.add(worst)  # its steps are spent: the next search round ranks the others
        if kept is not None:
            current[worst], accuracy = kept
    best = max((t.val_accuracy for t in trials if not t.refused), default=float("nan"))
    raise PipelineError(
        f"{where}.fallback: no allowed precision steps ({', '.join(allowed)}) bring the model to the floor {floor:.4f} "
        f"(best validation accuracy {best:.4f}); allow more steps ({where}.fallback_steps), raise "
        f"{where}.fallback_max_latency_ms, or give more budget (budget.accuracy_drop, {where}.accuracy_tolerance)"
    )


class ErrorAlone:
    """The error one layer adds on its own at a given step, the rest of the model (and its input and
    output) float: by our own measure, the noise-to-signal ratio of the logits against the float
    model's; or by ai-edge-quantizer's validation, that of the layer's own output (1/sqrt(SNR))."""

    def __init__(self, rules: Plan, layers: Mapping[str, Choice], x: np.ndarray, error_by: str):
        # Float input and output: int8 ones would add the same noise to every layer's number and hide which layer hurts.
        self.rules, self.layers, self.x, self.error_by = replace(rules, io="float32"), list(layers), x, error_by
        self.float_choice = Choice("float", "int8", "fallback", "fallback")
        self.reference = predict(self.rules.write(dict.fromkeys(self.layers, self.float_choice), self.float_choice), x)
        self.samples: dict[str, list[dict[str, np.ndarray]]] | None = None

    def __call__(self, layer: str, choice: Choice) -> float:
        """`layer`'s error alone as `choice`; a layer the quantizer's validation reports nothing of is measured our own way."""
        if self.error_by == "quantizer":
            from techniques.mixed_precision import signature_samples
            from techniques.quantizer_errors import layer_error

            if self.samples is None:
                self.samples = signature_samples(self.rules.float_model, self.x)
            found = layer_error(self.rules, layer, choice, self.samples)
            if found is not None:
                return found.noise_to_signal
        only = {**dict.fromkeys(self.layers, self.float_choice), layer: choice}
        return noise_to_signal(predict(self.rules.write(only, self.float_choice), self.x), self.reference)


def climb(
    rules: Plan, current: Mapping[str, Choice], layer: str, steps: Sequence[Choice], error: float, accuracy: float, data: Any,
    floor: float, max_latency_ms: float | None, trials: list[Trial], log: logging.Logger,
) -> tuple[tuple[Choice, float] | None, Outcome | None]:
    """Try `layer`'s `steps` in order (appending to `trials`), from a model of validation `accuracy`: the
    Outcome of the first that meets `floor`; else (the cheapest of the steps that raised the accuracy
    most, and that accuracy), or None when none raised it (the layer stays as it is)."""
    kept: tuple[Choice, float] | None = None
    best = accuracy
    for step in steps:
        trial_choices = {**current, layer: step}
        flatbuffer = rules.write(trial_choices)
        trial = measure(flatbuffer, layer, step, error, data, max_latency_ms)
        trials.append(trial)
        log.info(
            "    fallback: %s -> %s (its error alone %.3g): validation accuracy %.4f, %s, p50 %.3f ms%s",
            layer, step.words, error, trial.val_accuracy, human_bytes(trial.size_bytes), trial.latency_ms,
            " (refused: over the latency limit)" if trial.refused else "",
        )
        if trial.refused:
            continue
        task = task_named(data.task)
        if task.meets(trial.val_accuracy, best, -EPSILON):  # strictly better than the best so far
            kept, best = (step, trial.val_accuracy), trial.val_accuracy
        if task.meets(trial.val_accuracy, floor, EPSILON):
            return kept, Outcome(trial_choices, trials, flatbuffer, trial.val_accuracy)
    return kept, None


def measure(flatbuffer: bytes, layer: str, step: Choice, error: float, data: Any, max_latency_ms: float | None) -> Trial:
    """Size, p50 latency and validation accuracy of one tried model."""
    from pipeline.measure import litert
    from pipeline.measure.metrics import tflite_score
    from pipeline.measure.tasks import served_outputs

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "trial.tflite"
        path.write_bytes(flatbuffer)
        latency = float(np.median(litert.latency_ms(path, data.x_val[0], LATENCY_RUNS, LATENCY_WARMUP, threads=1)))
        refused = max_latency_ms is not None and latency > max_latency_ms
        accuracy = float("nan") if refused else tflite_score(path, data, served_outputs("logits", data.task))
    return Trial(layer, step.words, error, len(flatbuffer), latency, accuracy, refused)


def predict(flatbuffer: bytes, x: np.ndarray) -> np.ndarray:
    """The model's float outputs on `x` through LiteRT."""
    from pipeline.measure import litert

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.tflite"
        path.write_bytes(flatbuffer)
        return np.asarray(litert.predict(path, x), dtype=np.float64)


def noise_to_signal(outputs: np.ndarray, reference: np.ndarray) -> float:
    """sqrt(sum noise^2 / sum signal^2): 0 is exact, 1 means the output is lost."""
    signal = float(np.sum(np.square(reference)))
    return float(np.sqrt(np.sum(np.square(outputs - reference)) / signal)) if signal > 0 else 0.0


# How the table names each ranking measure.
ERROR_WORDS = {"own": "noise-to-signal of the logits", "quantizer": "ai-edge-quantizer's 1/sqrt(SNR) of the layer's output"}


def table(
    trials: Sequence[Trial], start_size: int, start_accuracy: float, floor: float, error_by: str = "own",
    task: Task = TASKS["classification"],
) -> str:
    """The search as a Markdown table: each step tried, what it cost in size and latency and bought in accuracy."""
    lines = [
        f"precision fallback: floor {floor:.4f} (validation accuracy); a layer's error alone: {ERROR_WORDS[error_by]}",
        "",
        "| layer | step | its error alone before | size | size cost | p50 ms | val accuracy | within budget |",
        "|---|---|---:|---:|---:|---:|---:|---|",
        f"| (as the rules ask) | - | - | {human_bytes(start_size)} | - | - | {start_accuracy:.4f} | no |",
    ]
    for trial in trials:
        verdict = "refused: latency" if trial.refused else ("yes" if task.meets(trial.val_accuracy, floor, EPSILON) else "no")
        accuracy = "-" if trial.refused else f"{trial.val_accuracy:.4f}"
        lines.append(
            f"| {trial.layer} | {trial.step} | {trial.error:.3g} | {human_bytes(trial.size_bytes)} | "
            f"{(trial.size_bytes - start_size) / start_size:+.1%} | {trial.latency_ms:.3f} | {accuracy} | {verdict} |"
        )
    return "\n".join(lines)


def facts(outcome: Outcome | None, start_size: int, start_accuracy: float, floor: float) -> dict[str, Any]:
    """The search for the stage's metadata (`fallback`), in the int8 fallback's shape plus the precisions."""
    chosen = outcome.choices if outcome else {}
    return {
        "fallback": {
            "float_layers": [name for name, choice in chosen.items() if choice.precision == "float"],
            "precisions": {name: choice.words for name, choice in chosen.items()},
            "split": "validation", "floor": floor, "start_val_accuracy": start_accuracy, "start_size_bytes": start_size,
            "trials": [asdict(trial) for trial in outcome.trials] if outcome else [],
        },
    }


def fall_back(
    rules: Plan, path: Path, tolerance: float | None, data: Any, budget: Budget | None, allowed: Sequence[str],
    max_latency_ms: float | None, log: logging.Logger, error_by: str = "own",
) -> tuple[Fallback, dict[str, Choice]]:
    """Check the file at `path` (written by `rules`) against the floor on the validation split; if it
    misses, replace it with the model the search chooses. Returns the findings (as the int8 fallback's)
    and each reported layer's final Choice."""
    from pipeline.measure.metrics import keras_score, tflite_score
    from pipeline.measure.tasks import served_outputs
    from techniques.fallback import accuracy_floor

    where, task, given = rules.where, task_named(data.task), served_outputs("logits", data.task)
    keras_accuracy = budget.available if budget is not None else keras_score(rules.keras_model, data, given)
    floor = accuracy_floor(budget, tolerance, keras_accuracy, task)
    assert floor is not None  # guaranteed by check_budget
    size, accuracy = path.stat().st_size, tflite_score(path, data, given)
    outcome = None
    if not task.meets(accuracy, floor, EPSILON):
        log.info("    validation accuracy %.4f misses the floor %.4f: choosing precisions per layer", accuracy, floor)
        start = rules.reported(rules.choices)
        outcome = search(rules, start, accuracy, data, floor, allowed, max_latency_ms, log, error_by)
        check_written(outcome.flatbuffer, rules.keras_model, outcome.choices, rules.io, where)
        path.write_bytes(outcome.flatbuffer)
    reports: tuple[str, ...] = ()
    if outcome is not None:
        report = path.parent / "fallback.md"
        report.write_text(table(outcome.trials, size, accuracy, floor, error_by, task) + "\n")
        log.info("    precisions chosen:\n%s", report.read_text().rstrip())
        reports = (report.name,)
    final = outcome.val_accuracy if outcome else accuracy
    metrics = {
        "start_val_accuracy": accuracy, "fallback_val_accuracy": final,
        "fallback_size_cost_bytes": float((len(outcome.flatbuffer) if outcome else size) - size),
        "fallback_float_layers": float(sum(c.precision == "float" for c in (outcome.choices if outcome else {}).values())),
    }
    found = Fallback(facts(outcome, size, accuracy, floor), metrics, reports, {"keras_accuracy": keras_accuracy, "tflite_accuracy": final})
    return found, rules.reported(outcome.choices if outcome else rules.choices)
