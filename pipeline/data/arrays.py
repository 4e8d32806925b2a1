"""Arrays a user already has: NumPy `.npz` archives and CSV tables (numeric columns, or a text column).

Both are read without pickle (no code in a data file can run). Scaling uses statistics of the
training split only, so the test split stays unseen.
"""

from __future__ import annotations

import logging
import math
import zipfile
from array import array
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import Field

from pipeline.data.csv_rows import CsvRows, csv_rows, label_codes
from pipeline.data.dataset import (
    NORMALIZE_HELP,
    Dataset,
    Normalize,
    SplitParams,
    as_labels,
    given_split,
    normalize,
    split,
    standardized_targets,
    with_channel,
)
from pipeline.data.preprocessing import Preprocessing
from pipeline.data.streaming import Streamed, as_split
from pipeline.data.text import column_texts, tokenized
from pipeline.data.tokenizer import TokenizerParams
from pipeline.errors import PipelineError, quoted
from pipeline.plugin.fields import ExistingFile
from pipeline.plugin.schema import Plugin

log = logging.getLogger("pipeline")

SPLIT_KEYS = ("x_train", "y_train", "x_test", "y_test")


class NpzParams(SplitParams):
    """An .npz archive holding `x` and `y`, or ready-made `x_train, y_train, x_test, y_test`."""

    path: ExistingFile = Field(description="The .npz file: arrays x and y, or x_train, y_train, x_test, y_test.")
    normalize: Normalize = Field("unit", description=NORMALIZE_HELP)


class NpzSource(Plugin[NpzParams]):
    """Examples from NumPy arrays: (N, H, W[, C]) images or (N, features) tables, integer or text labels,
    float targets (task=regression) or (N, labels) 0/1 rows (task=multilabel)."""

    tasks: ClassVar = frozenset({"classification", "regression", "multilabel"})

    def load(self, seed: int, task: str = "classification") -> Dataset:
        """The archive's own train/test split when it has one, else a split of `x` and `y`."""
        arrays = read_npz(Path(self.config.path))
        if task != "classification":
            return normalize(task_split(arrays, task, self.config, seed), self.config.normalize)
        if set(SPLIT_KEYS) <= set(arrays):
            y_train, names = as_labels(arrays["y_train"], "data.path: y_train")
            y_test, _ = as_labels(arrays["y_test"], "data.path: y_test")
            if names:  # text labels: number both splits with one vocabulary
                y_all, names = as_labels(np.concatenate([arrays["y_train"], arrays["y_test"]]), "data.path")
                y_train, y_test = y_all[: len(y_train)], y_all[len(y_train) :]
            data = given_split(
                with_channel(arrays["x_train"]), y_train, with_channel(arrays["x_test"]), y_test, self.config, seed, names
            )
        elif {"x", "y"} <= set(arrays):
            y, names = as_labels(arrays["y"], "data.path: y")
            data = split(with_channel(arrays["x"]), y, self.config, seed, names)
        else:
            raise PipelineError(
                f"data.path: {self.config.path} holds arrays {sorted(arrays)}; "
                "save arrays named x and y, or x_train, y_train, x_test and y_test"
            )
        return normalize(data, self.config.normalize)


def task_split(arrays: dict[str, np.ndarray], task: str, params: NpzParams, seed: int) -> Dataset:
    """Regression or multi-label arrays split (the archive's own test split kept when it has one)."""
    if set(SPLIT_KEYS) <= set(arrays):
        y_train = task_targets(arrays["y_train"], task, "data.path: y_train")
        y_test = task_targets(arrays["y_test"], task, "data.path: y_test")
        data = given_split(with_channel(arrays["x_train"]), y_train, with_channel(arrays["x_test"]), y_test, params, seed)
    elif {"x", "y"} <= set(arrays):
        data = split(with_channel(arrays["x"]), task_targets(arrays["y"], task, "data.path: y"), params, seed)
    else:
        raise PipelineError(
            f"data.path: {params.path} holds arrays {sorted(arrays)}; save arrays named x and y, or x_train, y_train, x_test and y_test"
        )
    return standardized_targets(data) if task == "regression" else data


def task_targets(y: np.ndarray, task: str, where: str) -> np.ndarray:
    """Regression values as float32 (N,), or multi-label rows as float32 (N, labels) of 0 and 1."""
    y = np.asarray(y)
    if y.dtype.kind not in "iufb" or not np.isfinite(y.astype(np.float64)).all():
        raise PipelineError(f"{where}: task={task} needs finite numbers, got {y.dtype} values; fill in or drop the rest")
    if task == "regression":
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.ndim != 1:
            raise PipelineError(f"{where}: task=regression takes one value per example, got shape {y.shape}")
        return y.astype(np.float32)
    if y.ndim != 2 or not np.isin(y, (0, 1)).all():
        raise PipelineError(f"{where}: task=multilabel takes rows of 0/1 flags shaped (examples, labels), got shape {y.shape}")
    return y.astype(np.float32)


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of an .npz file, refusing pickled objects."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except ValueError as error:  # object arrays need pickle, which could run code
        raise PipelineError(f"data.path: {path} holds pickled objects ({error}); save plain numeric arrays") from None
    except (OSError, EOFError, zipfile.BadZipFile) as error:  # truncated or not an .npz at all
        raise PipelineError(f"data.path: cannot read {path} as .npz ({error}); save it with numpy.savez") from None
    for key in ("x", "x_train", "x_test"):
        if key in arrays and (arrays[key].ndim < 2 or arrays[key].dtype.kind not in "iufb"):
            raise PipelineError(
                f"data.path: array {key} in {path} has shape {arrays[key].shape} and type {arrays[key].dtype}; "
                "expected numbers shaped (examples, ...)"
            )
        if key in arrays and not np.isfinite(arrays[key]).all():
            first = tuple(int(i) for i in np.argwhere(~np.isfinite(arrays[key]))[0])
            raise PipelineError(
                f"data.path: array {key} in {path} holds NaN or infinite values (first at index {first}); "
                "fill in or drop those examples"
            )
    for x_key, y_key in (("x", "y"), ("x_train", "y_train"), ("x_test", "y_test")):
        if x_key in arrays and y_key in arrays and len(arrays[x_key]) != len(arrays[y_key]):
            raise PipelineError(
                f"data.path: {path} has {len(arrays[x_key])} examples in {x_key} but {len(arrays[y_key])} labels in {y_key}"
            )
    return arrays


class CsvParams(SplitParams, TokenizerParams):
    """A CSV table with a header row: numeric feature columns (or one text column) and one label column.

    The tokenizer's settings (vocab_size, sequence_length, standardize) apply with `text` only.
    """

    path: ExistingFile = Field(description="The .csv file; its first row names the columns.")
    label: str | list[str] = Field(
        "label", min_length=1,
        description="Column holding the class (ids or names) or the value (task=regression); a list of 0/1 columns for task=multilabel.",
    )
    text: str | None = Field(
        None, min_length=1, description="Column holding a text per row, tokenized to int32 ids (null: numeric features)."
    )
    features: list[str] | None = Field(None, description="Feature columns to use (null: every other column).")
    delimiter: str = Field(",", min_length=1, max_length=1, description="Character between fields.")
    normalize: Normalize = Field("standard", description=NORMALIZE_HELP)
    in_memory_mb: int = Field(
        1024, ge=0, description="Largest CSV file (MB on disk) read into memory whole; a larger table of numeric "
        "features is read in chunks: labels first, the feature rows as each split is read (0: always; not with text).",
    )


class CsvSource(Plugin[CsvParams]):
    """Tabular examples (N, features) for models such as `mlp`, or texts as token ids for text models."""

    tasks: ClassVar = frozenset({"classification", "regression", "multilabel"})

    def load(self, seed: int, task: str = "classification") -> Dataset:
        """Features as float32 (or, with `text`, int32 token ids), labels as ids (text labels numbered in sorted
        order), regression values (standardised on the training split) or multi-label 0/1 rows."""
        path = Path(self.config.path)
        labels = label_columns(self.config.label, task)
        if self.config.text is None and path.stat().st_size > self.config.in_memory_mb * 2**20:
            return self.streamed(path, labels, seed, task)
        header, rows = read_csv(path, self.config.delimiter)
        y, names = csv_targets(header, rows, labels, task)
        label = ",".join(labels)  # what predict reads as the label column(s)
        if self.config.text is not None:
            column(header, self.config.text, "data.text")
            data = split(column_texts(header, rows, self.config.text), y, self.config, seed, names)
            data = standardized_targets(data) if task == "regression" else data
            described = Preprocessing(features=(self.config.text,), label=label)  # what predict reads
            return tokenized(replace(data, preprocessing=described), self.config)
        wanted = self.config.features or [name for name in header if name not in labels]
        columns = [column(header, name, "data.features") for name in wanted]
        x = np.array([[number(row, at, header, line) for at in columns] for line, row in rows], dtype=np.float32)
        data = split(x, y, self.config, seed, names)
        data = standardized_targets(data) if task == "regression" else data
        return normalize(data, self.config.normalize, features=tuple(wanted), label=label)

    def streamed(self, path: Path, labels: list[str], seed: int, task: str) -> Dataset:
        """The table split from one pass that keeps only the labels; each split's features are read
        in chunks when consumed, scaled with statistics of the training rows."""
        config = self.config
        rows = csv_rows(path, config.delimiter)
        _, header = next(rows)
        label_at = [column(header, name, "data.label") for name in labels]
        wanted = config.features or [name for name in header if name not in labels]
        columns = [column(header, name, "data.features") for name in wanted]

        def check(line: int, row: list[str]) -> None:
            for at in columns:
                number(row, at, header, line)

        y, names = streamed_targets(rows, header, label_at, labels, task, check)
        if not len(y):
            raise PipelineError(f"data.path: {path} needs a header row and at least one data row")
        table = CsvRows(np.arange(len(y)), (len(columns),), path=str(path), columns=tuple(columns),
                        delimiter=config.delimiter)
        data = split(np.arange(len(y)), y, config, seed, names)
        data = standardized_targets(data) if task == "regression" else data
        log.info("data: %d rows of %s (%.0f MB) read in chunks (data.in_memory_mb=%d)", len(y), path.name,
                 path.stat().st_size / 2**20, config.in_memory_mb)
        data = replace(data, **in_file_order(data, table))
        return normalize(data, config.normalize, features=tuple(wanted), label=",".join(labels))


def label_columns(label: str | list[str], task: str) -> list[str]:
    """The label column names; several only for task=multilabel."""
    labels = [label] if isinstance(label, str) else list(label)
    if len(labels) > 1 and task != "multilabel":
        raise PipelineError(f"data.label: {len(labels)} label columns {labels} need task=multilabel; or name one column")
    return labels


def streamed_targets(
    rows: Iterator[tuple[int, list[str]]], header: list[str], at: list[int], labels: list[str], task: str, check: Any
) -> tuple[np.ndarray, tuple[str, ...]]:
    """The labels of every row from one pass that calls `check(line, row)` on each: class ids with the
    class names, regression values, or multi-label 0/1 rows with the label names (as `csv_targets`)."""
    if task == "classification":
        codes, seen = label_codes(rows, at[0], check)
        if not len(codes):
            return codes, ()
        ids, names = as_labels(np.array(seen), f"data.label: column '{labels[0]}'")
        return ids[codes], names
    values = array("d")
    for line, row in rows:
        check(line, row)
        values.extend(number(row, i, header, line, "data.label") for i in at)
    table = np.frombuffer(values, np.float64).reshape(-1, len(at)) if values else np.zeros((0, len(at)))
    return task_targets(table, task, f"data.label: columns {labels}"), tuple(labels)


def csv_targets(
    header: list[str], rows: list[tuple[int, list[str]]], labels: list[str], task: str
) -> tuple[np.ndarray, tuple[str, ...]]:
    """The CSV's labels for `task`, with class names (classification) or label names (multi-label)."""
    at = [column(header, name, "data.label") for name in labels]
    if task == "regression":
        return np.array([number(row, at[0], header, line, "data.label") for line, row in rows], np.float32), tuple(labels)
    if task == "multilabel":
        flags = np.array([[number(row, i, header, line, "data.label") for i in at] for line, row in rows], np.float32)
        return task_targets(flags, task, f"data.label: columns {labels}"), tuple(labels)
    raw = np.array([row[at[0]] for _, row in rows])
    check_not_values(raw, labels[0])
    return as_labels(raw, f"data.label: column '{labels[0]}'")


# More distinct numbers than this in a label column, most of them not whole or nearly all different,
# read as values to predict rather than classes.
VALUE_LIKE_DISTINCT = 50


def check_not_values(raw: np.ndarray, label: str) -> None:
    """PipelineError when a classification label column looks like values (a price): suggest task=regression."""
    try:
        values = raw.astype(np.float64)
    except ValueError:  # class names
        return
    distinct = len(np.unique(values))
    fractional = bool(np.any(np.mod(values, 1) != 0))
    if distinct > VALUE_LIKE_DISTINCT and (fractional or distinct > len(values) / 10):
        raise PipelineError(
            f"data.label: column '{label}' holds {distinct} distinct numbers in {len(values)} rows, values rather "
            "than classes; set task=regression to predict them (or name the class column in data.label)"
        )


def in_file_order(data: Dataset, table: Streamed, test_table: Streamed | None = None) -> dict[str, Any]:
    """Each split (row numbers, as drawn) as rows of `table` (the test split's of `test_table` when
    given) in file order, with its labels in that order: a split is read in one pass down the file."""
    fields: dict[str, Any] = {}
    for x_key, y_key in (("x_train", "y_train"), ("x_val", "y_val"), ("x_test", "y_test")):
        rows, labels = getattr(data, x_key), getattr(data, y_key)
        order = np.argsort(rows, kind="stable")
        source = test_table if x_key == "x_test" and test_table is not None else table
        fields[x_key], fields[y_key] = as_split(source.subset(rows[order])), labels[order]
    return fields


def read_csv(path: Path, delimiter: str) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The header and the non-empty rows with their line numbers; every row as long as the header."""
    rows = csv_rows(path, delimiter)
    _, header = next(rows)
    lines = list(rows)
    if not lines:
        raise PipelineError(f"data.path: {path} needs a header row and at least one data row")
    return header, lines


def column(header: list[str], name: str, key: str) -> int:
    """Index of column `name`, or an error listing the columns there are."""
    if name not in header:
        raise PipelineError(f"{key}: no column '{name}' in the CSV file (columns: {', '.join(header)})")
    return header.index(name)


def number(row: list[str], at: int, header: list[str], line: int, key: str = "data.features") -> float:
    """One feature (or target) value; a non-number names its line and column."""
    try:
        value = float(row[at])
    except ValueError:
        fix = "list only numeric columns in data.features" if key == "data.features" else "give numbers in the label columns"
        raise PipelineError(
            f"{key}: column {quoted(header[at])} line {line} holds {quoted(row[at])}, not a number; {fix}"
        ) from None
    if not math.isfinite(value):
        raise PipelineError(
            f"data.path: column {quoted(header[at])} line {line} holds {quoted(row[at])}; "
            "fill in or drop rows with missing or infinite values"
        )
    return value
