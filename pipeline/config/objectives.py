"""What a search optimises: final-stage metrics named by the `objectives` config key.

`python -m pipeline` returns the named metrics of the final stage to Hydra, so a sweeper (Optuna)
can search on them: one number for one objective, a list for several. The test accuracy is not
among them: choices are made on the validation split (`val_accuracy`), and the test split is
measured once, on what ships, for the report.

Each objective has a natural direction (accuracy up, size and latency down). The sweeper preset
takes its `direction` from `${directions:${objectives},${task}}`, so naming the objectives is enough.
Other tasks name their own validation metrics (`val_mae` down, `val_micro_f1` up, ...); for them
`val_accuracy`, the default objective, stands for the task's primary validation metric.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

from pipeline.errors import PipelineError, quoted
from pipeline.plugin.schema import suggest

Direction = Literal["maximize", "minimize"]

# Metrics where more is better; every other measured metric (bytes, parameters, milliseconds,
# operations, errors such as MAE) is better smaller.
MAXIMIZED = frozenset({
    "accuracy", "val_accuracy", "sparsity", "val_r2", "test_r2", "val_micro_f1", "test_micro_f1",
    "val_macro_f1", "test_macro_f1", "val_roc_auc", "test_roc_auc",
})
TEST_ONLY = "accuracy"  # the test split's accuracy: reported, never optimised


def valid_names(task: str = "classification") -> list[str]:
    """Metrics a search may optimise: everything the runner measures for `task` but the test split's metrics."""
    from pipeline.measure.metrics import metric_names  # not at import time: the command line starts without NumPy

    return [name for name in metric_names(task) if name != TEST_ONLY and not name.startswith("test_") and name != "threshold"]


def for_task(names: Sequence[str], task: str = "classification") -> list[str]:
    """`names` with `val_accuracy` read as the task's primary validation metric (`val_mae`, `val_micro_f1`)."""
    from pipeline.measure.tasks import task_named

    primary = task_named(task).val_primary
    return [primary if name == "val_accuracy" else str(name) for name in names]


def direction(name: str) -> Direction:
    """`maximize` for accuracies, F1, AUC, R² and sparsity, `minimize` for sizes, counts, latencies and errors."""
    return "maximize" if name in MAXIMIZED else "minimize"


def directions(names: Iterable[str], task: str = "classification") -> list[str]:
    """One direction per objective (the `directions` resolver of the sweeper preset)."""
    return [direction(name) for name in for_task([str(n) for n in names], task)]


def check(names: Sequence[str], where: str = "objectives", task: str = "classification") -> None:
    """Raise PipelineError unless `names` are distinct metrics a search may optimise (for `task`)."""
    names = for_task(names, task)
    valid = valid_names(task)
    if not names:
        raise PipelineError(f"{where}: empty; name at least one metric (valid: {', '.join(valid)})")
    for name in names:
        if name == TEST_ONLY or name.startswith("test_"):
            raise PipelineError(
                f"{where}: {quoted(name)} is the test split's, which never steers a choice; use val_{name.removeprefix('test_')}"
            )
        if name not in valid:
            raise PipelineError(f"{where}: {quoted(name)} is not a measured metric{suggest(name, valid)}")
    if len(set(names)) != len(names):
        raise PipelineError(f"{where}: {list(names)} names a metric twice; name each once")


def check_directions(
    given: Any, names: Sequence[str], where: str = "hydra.sweeper.direction", task: str = "classification"
) -> None:
    """Raise PipelineError if a sweeper's directions do not match the objectives one for one."""
    items = list(given) if isinstance(given, Sequence) and not isinstance(given, str) else [given]
    given = [str(getattr(d, "name", d)) for d in items]  # Optuna's config may hold Direction enums
    wanted = directions(names, task)
    if len(given) != len(wanted):
        raise PipelineError(
            f"{where}: {len(given)} direction(s) for {len(wanted)} objective(s) {list(names)}; "
            f"use {wanted} (the pareto sweeper preset sets this from `objectives`)"
        )
    for name, have, want in zip(names, given, wanted):
        if have != want:
            raise PipelineError(f"{where}: {have} {name} would search for the worst models; use {want} for {name}")


def values(metrics: Mapping[str, float], names: Sequence[str], task: str = "classification") -> float | list[float]:
    """The objectives' values from a stage's metrics: a float for one objective, else a list."""
    found = [float(metrics[name]) for name in for_task(names, task)]
    return found[0] if len(found) == 1 else found


def register_resolver() -> None:
    """Make `${directions:${objectives}}` available to configs (idempotent)."""
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver("directions", directions, replace=True)
