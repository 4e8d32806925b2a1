"""The end-of-run table: one row per stage, the numbers a person compares."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pipeline.measure.tasks import task_named


@dataclass(frozen=True)
class StageRow:
    """What the runner measured after one stage."""

    stage: str
    format: str
    seconds: float
    metrics: Mapping[str, float]
    cached: bool = False


COLUMNS = (
    ("stage", "stage"),
    ("format", "format"),
    ("size", "size_bytes"),
    ("gzip", "gzip_bytes"),
    ("params", "params"),
    ("sparsity", "sparsity"),
    ("MACs", "macs"),
    ("accuracy", "accuracy"),
    ("p50 ms", "latency_p50_ms"),
    ("p90 ms", "latency_p90_ms"),
    ("time s", "seconds"),
)


def human_bytes(count: float) -> str:
    """1234567 -> '1.18 MiB'."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def human_count(count: float) -> str:
    """4127616 -> '4.13M': operation counts at a glance."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if count >= scale:
            return f"{count / scale:.3g}{unit}"
    return f"{count:.0f}"


# Shown when the run has an accuracy budget: the split its choices were made on.
VALIDATION_TITLE = "val acc"
VALIDATION_AT = [title for title, _ in COLUMNS].index("accuracy") + 1  # right after the test accuracy


def task_cells(m: Mapping[str, float], task: str, validation: bool) -> list[str]:
    """The task's test metrics (and, with `validation`, its primary validation metric) of one row."""
    described = task_named(task)
    shown = [f"{m[described.test_key(metric)]:.4g}" if described.test_key(metric) in m else "" for metric in described.metrics]
    if validation:
        shown.insert(1, f"{m[described.val_primary]:.4g}" if described.val_primary in m else "")
    return shown


def cells(row: StageRow, validation: bool = False, task: str = "classification") -> list[str]:
    """Formatted cells of one row, in COLUMNS order (with the validation accuracy after the test one;
    other tasks' metrics in place of the accuracy)."""
    m = row.metrics
    shown = [
        f"{row.stage} (cached)" if row.cached else row.stage,
        row.format,
        human_bytes(m["size_bytes"]),
        human_bytes(m["gzip_bytes"]),
        f"{m['params']:,.0f}",
        f"{m['sparsity']:.1%}",
        human_count(m["macs"]) if "macs" in m else "-",
        f"{m['accuracy']:.4f}" if "accuracy" in m else "",
        f"{m['latency_p50_ms']:.3g}",
        f"{m['latency_p90_ms']:.3g}",
        f"{row.seconds:.1f}",
    ]
    if task != "classification":
        at = VALIDATION_AT - 1
        return [*shown[:at], *task_cells(m, task, validation), *shown[at + 1 :]]
    if validation:
        shown.insert(VALIDATION_AT, f"{m['val_accuracy']:.4f}" if "val_accuracy" in m else "")
    return shown


def headers(validation: bool, task: str) -> list[str]:
    """The column titles: COLUMNS', the accuracy replaced by the task's metrics for other tasks."""
    header = [title for title, _ in COLUMNS]
    if task != "classification":
        described = task_named(task)
        titles = list(described.titles)
        if validation:
            titles.insert(1, f"val {described.titles[0]}")
        at = VALIDATION_AT - 1
        return [*header[:at], *titles, *header[at + 1 :]]
    if validation:
        header.insert(VALIDATION_AT, VALIDATION_TITLE)
    return header


def table(rows: Sequence[StageRow], validation: bool = False, task: str = "classification") -> str:
    """A Markdown table (readable as plain text too) of every stage's measurements.

    `accuracy` is on the test split; with `validation` (runs with an accuracy budget) the table
    adds `val acc`, the validation accuracy the budget is kept on. Other tasks show their own
    metrics there (MAE, RMSE, R²; micro-F1, macro-F1, AUC) and their primary validation metric.
    """
    header = headers(validation, task)
    return markdown(header, [cells(row, validation, task) for row in rows], right_aligned=set(range(2, len(header))))


def markdown(header: list[str], rows: list[list[str]], right_aligned: set[int]) -> str:
    """A Markdown table with columns padded to their widest cell, the `right_aligned` ones (numbers) to the right."""
    widths = [max(len(line[i]) for line in [header, *rows]) for i in range(len(header))]

    def line(values: list[str]) -> str:
        padded = [v.rjust(w) if i in right_aligned else v.ljust(w) for i, (v, w) in enumerate(zip(values, widths))]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), rule, *(line(r) for r in rows)])
