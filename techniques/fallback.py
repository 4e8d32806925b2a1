"""Float fallback: keep the fewest layers float that bring a full-integer model within the accuracy budget.

When the int8 model misses the floor on the validation split, the search measures every
still-quantized layer's int8 error (see `quant_debug.layer_errors`), keeps the worst one float,
converts, and measures again; one layer at a time, re-ranking after each, until the model meets
the floor or every layer is float. Ranking after each step matters: once a layer is float, the
error of the layers after it changes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from pipeline.data import Dataset
from pipeline.errors import PipelineError
from pipeline.measure.tasks import TASKS, Task, task_named
from pipeline.plugin.schema import Params
from pipeline.run.budget import EPSILON, Budget
from pipeline.run.summary import human_bytes

if TYPE_CHECKING:
    from techniques.quant_debug import LayerNames

# Validation examples the int8 error of each layer is measured on: enough for a stable ranking,
# few enough that each step of the search stays quick.
RANKING_EXAMPLES = 256


class FallbackParams(Params):
    """The float-fallback setting; mixed into the parameters of stages that write int8 TFLite."""

    fallback: Literal["off", "auto"] = Field(
        "off",
        description=(
            "auto: when the full-integer model misses the accuracy budget on the validation split "
            "(budget.accuracy_drop, and accuracy_tolerance below the Keras model), keep the layers with the "
            "largest int8 error float, fewest first, until it holds; off: never."
        ),
    )


def fallback_note(params: FallbackParams) -> str:
    """For the layer plan: which layers fallback=auto may keep float. Which ones is known only after
    conversion (their int8 error, measured on the validation split), so the plan says how they are chosen."""
    if params.fallback != "auto":
        return ""
    return (
        "; fallback auto: if full integer misses the accuracy budget on the validation split, the layers with the "
        "largest int8 error stay float, fewest first (named after conversion, in fallback.md)"
    )


def check_budget(params: Any, settings: Any, where: str) -> None:
    """fallback=auto needs a recipe budget or the stage's tolerance (`params` mix FallbackParams with GateParams)."""
    if params.fallback == "auto" and settings.budget.accuracy_drop is None and params.accuracy_tolerance is None:
        raise PipelineError(
            f"{where}.fallback: auto keeps layers float until an accuracy budget holds, but none is set; "
            f"set budget.accuracy_drop (e.g. 0.01) or {where}.accuracy_tolerance"
        )


def fall_back(
    keras_model: Any, calibration: Any, path: Path, tolerance: float | None, data: Dataset, budget: Budget | None,
    where: str, log: logging.Logger, candidate: Callable[[list[str]], bytes] | None = None,
) -> Fallback:
    """Check the int8 file at `path` against the floor on the validation split; if it misses, replace it
    with the model the search chooses.

    `keras_model` is the float model (taking inputs as `data` holds them) whose layers are
    ranked, whose accuracy the tolerance is measured from, and which, without `candidate`, is
    converted with the chosen layers float; `candidate(float_layers)` makes the model to try
    instead (QAT fine-tunes again). With a budget, the float model's validation accuracy is the
    one the runner measured after the stage that made it (`budget.available`), not measured again.
    `where` is the stage's config key (`stages.NAME`), which errors name.
    """
    from pipeline.measure.metrics import keras_score, tflite_score
    from pipeline.measure.tasks import served_outputs
    from techniques import quant_debug as debug

    task, given = task_named(data.task), served_outputs("logits", data.task)
    if budget is not None:
        keras_accuracy = budget.available
    else:
        keras_accuracy = keras_score(keras_model, data, given)
    floor = accuracy_floor(budget, tolerance, keras_accuracy, task)
    assert floor is not None  # guaranteed by check_budget
    int8_size, int8_accuracy = path.stat().st_size, tflite_score(path, data, given)
    name, limit = task.title, task.limit_word
    if task.meets(int8_accuracy, floor, EPSILON):
        log.info("    int8 validation %s %.4f meets the %s %.4f: every layer stays int8", name, int8_accuracy, limit, floor)
        return result(None, int8_size, int8_accuracy, floor, keras_accuracy, path.parent, log, task)
    if not task.meets(keras_accuracy, floor, EPSILON):
        raise PipelineError(
            f"{where}.fallback: the incoming model's validation {name} {keras_accuracy:.4f} is already {task.worse_word} the "
            f"{limit} {floor:.4f}, so no int8 model can meet it; give more budget (budget.accuracy_drop, "
            f"{where}.accuracy_tolerance) or make earlier stages spend less (see budget.md)"
        )
    log.info("    int8 validation %s %.4f misses the %s %.4f: choosing layers to keep float", name, int8_accuracy, limit, floor)
    calibrated = debug.calibrate(keras_model, calibration)
    outcome = search(calibrated, debug.keras_layer_names(keras_model), data, floor, where, log, candidate)
    path.write_bytes(outcome.flatbuffer)
    return result(outcome, int8_size, int8_accuracy, floor, keras_accuracy, path.parent, log, task)


def accuracy_floor(
    budget: Budget | None, tolerance: float | None, keras_accuracy: float, task: Task = TASKS["classification"]
) -> float | None:
    """The validation score the stage's output must reach: the stricter of the budget's limit and the tolerance
    (a floor of accuracy or F1, a ceiling of MAE)."""
    floors = [budget.floor] if budget is not None else []
    if tolerance is not None:
        floors.append(task.limit(keras_accuracy, tolerance))
    return task.strictest(floors) if floors else None


@dataclass(frozen=True)
class Step:
    """One model the search tried: the layer it added to the float ones, and what that cost and bought."""

    layer: str
    error: float
    size_bytes: int
    val_accuracy: float


@dataclass(frozen=True)
class Outcome:
    """What the search chose: the float layers (in the order added), every step, and the model bytes."""

    float_layers: list[str]
    steps: list[Step]
    flatbuffer: bytes
    val_accuracy: float


def search(
    calibrated: bytes, layer_names: LayerNames, data: Any, floor: float, where: str, log: logging.Logger,
    candidate: Callable[[list[str]], bytes] | None = None,
) -> Outcome:
    """Add float layers, worst int8 error first, until the validation accuracy reaches `floor`.

    Each step's model is `candidate(float_layers)`, by default the calibrated model quantized with
    those layers float.
    """
    from techniques import quant_debug as debug

    task = task_named(data.task)
    nodes = debug.layer_nodes(debug.quantize(calibrated), layer_names)
    ranking = data.x_val[:RANKING_EXAMPLES]
    chosen: list[str] = []
    steps: list[Step] = []
    while True:
        float_nodes = [node for layer in chosen for node in nodes[layer]]
        errors = debug.layer_errors(calibrated, float_nodes, {k: v for k, v in nodes.items() if k not in chosen}, ranking)
        if not errors:
            break
        worst = max(errors, key=lambda layer: errors[layer])
        chosen.append(worst)
        if candidate is None:
            flatbuffer = debug.quantize(calibrated, [node for layer in chosen for node in nodes[layer]])
        else:
            flatbuffer = candidate(list(chosen))
        accuracy = accuracy_of(flatbuffer, data)
        steps.append(Step(worst, errors[worst], len(flatbuffer), accuracy))
        log.info(
            "    fallback: %s float (int8 error %.3g) -> validation %s %.4f, %s",
            worst, errors[worst], task.title, accuracy, human_bytes(len(flatbuffer)),
        )
        if task.meets(accuracy, floor, EPSILON):
            return Outcome(chosen, steps, flatbuffer, accuracy)
    best = steps[-1].val_accuracy if steps else float("nan")
    raise PipelineError(
        f"{where}.fallback: even with all {len(chosen)} quantized layers float the model reaches validation {task.title} "
        f"{best:.4f}, {task.worse_word} the {task.limit_word} {floor:.4f} (the int8 input and output lose the rest); give more budget "
        f"(budget.accuracy_drop, {where}.accuracy_tolerance) or keep the model float"
    )


def float_kept(keras_model: Any, calibration: Any, layers: list[str]) -> bytes:
    """The full-integer model of `keras_model` with `layers` kept float."""
    from techniques import quant_debug as debug

    calibrated = debug.calibrate(keras_model, calibration)
    nodes = debug.layer_nodes(debug.quantize(calibrated), debug.keras_layer_names(keras_model))
    return debug.quantize(calibrated, [node for layer in layers for node in nodes.get(layer, [])])


def accuracy_of(flatbuffer: bytes, data: Any) -> float:
    """Validation score (the task's primary metric) of TFLite model bytes through LiteRT."""
    import tempfile

    from pipeline.measure.metrics import tflite_score
    from pipeline.measure.tasks import served_outputs

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "candidate.tflite"
        path.write_bytes(flatbuffer)
        return tflite_score(path, data, served_outputs("logits", data.task))


def table(outcome: Outcome, int8_size: int, int8_accuracy: float, floor: float, task: Task = TASKS["classification"]) -> str:
    """The search as a Markdown table: what each added float layer cost in size and bought in the task's metric."""
    lines = [
        f"float fallback: {task.limit_word} {floor:.4f} (validation {task.title})",
        "",
        f"| float layers | int8 error of the added layer | size | size cost | val {task.title} | within budget |",
        "|---|---:|---:|---:|---:|---|",
        f"| (none: full integer) | - | {human_bytes(int8_size)} | - | {int8_accuracy:.4f} | no |",
    ]
    for count, step in enumerate(outcome.steps, 1):
        layers = ", ".join(s.layer for s in outcome.steps[:count])
        lines.append(
            f"| {layers} | {step.error:.3g} | {human_bytes(step.size_bytes)} | "
            f"{(step.size_bytes - int8_size) / int8_size:+.1%} | {step.val_accuracy:.4f} | "
            f"{'yes' if task.meets(step.val_accuracy, floor, EPSILON) else 'no'} |"
        )
    return "\n".join(lines)


@dataclass(frozen=True)
class Fallback:
    """What the fallback decided, for the stage's artifact: facts for its metadata (the float layers
    and the search), numbers for MLflow, report files beside the model (the search's table), and
    the validation accuracies of the float and the chosen model, which the accuracy gate reuses.
    The default is no fallback at all (`fallback: off`)."""

    facts: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    reports: tuple[str, ...] = ()
    accuracies: dict[str, float] = field(default_factory=dict)

    @property
    def float_layers(self) -> list[str]:
        """The layers kept float by the budget's choice."""
        return list(self.facts.get("fallback", {}).get("float_layers", []))


def result(
    outcome: Outcome | None, int8_size: int, int8_accuracy: float, floor: float, keras_accuracy: float, folder: Path,
    log: logging.Logger, task: Task = TASKS["classification"],
) -> Fallback:
    """The fallback's findings; the search's table goes to the log and to `<folder>/fallback.md` (beside the model)."""
    chosen = outcome.float_layers if outcome else []
    final_size = len(outcome.flatbuffer) if outcome else int8_size
    final_accuracy = outcome.val_accuracy if outcome else int8_accuracy
    reports: tuple[str, ...] = ()
    if outcome is not None:
        report = folder / "fallback.md"
        report.write_text(table(outcome, int8_size, int8_accuracy, floor, task) + "\n")
        log.info("    layers kept float: %s\n%s", ", ".join(chosen), report.read_text().rstrip())
        reports = (report.name,)
    facts = {
        "fallback": {
            "float_layers": chosen, "split": "validation", "floor": floor, "int8_val_accuracy": int8_accuracy, "int8_size_bytes": int8_size,
            "steps": [asdict(step) for step in outcome.steps] if outcome else [],
        },
    }
    metrics = {
        "int8_val_accuracy": int8_accuracy,
        "fallback_float_layers": float(len(chosen)),
        "fallback_val_accuracy": final_accuracy,
        "fallback_size_cost_bytes": float(final_size - int8_size),
    }
    return Fallback(facts, metrics, reports, {"keras_accuracy": keras_accuracy, "tflite_accuracy": final_accuracy})


def fallback_remedies(fallback: str, where: str) -> list[str]:
    """The float fallback as a fix an accuracy gate's error may offer: only while it is off."""
    return [f"set {where}.fallback=auto"] if fallback == "off" else []
