"""CSV tables larger than memory: the label column chosen in one pass, the feature rows read in chunks.

The pass parses every row once (checking its field count and that its features are finite
numbers, as the in-memory path does) but keeps only a label code per row. The split is drawn
from the labels with the same seeded, stratified draw as in memory, so the same rows land in
the same split; each split is then a sorted list of row numbers whose features are read from
the file, a few thousand rows at a time, whenever a consumer reads the split.
"""

from __future__ import annotations

import csv
import hashlib
import os
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.data.streaming import SHUFFLE_BUFFER, Streamed, in_asked_order
from pipeline.errors import PipelineError

# Rows parsed per chunk: a few MB of float32 features for tables of hundreds of columns.
CHUNK_ROWS = 4096


def csv_rows(path: Path, delimiter: str) -> Iterator[tuple[int, list[str]]]:
    """The header (line 1), then every non-empty row with its line number, each as long as the header."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            rows = ((number, row) for number, row in enumerate(csv.reader(handle, delimiter=delimiter), 1) if row)
            first = next(rows, None)
            if first is None:
                raise PipelineError(f"data.path: {path} needs a header row and at least one data row")
            header = [name.strip() for name in first[1]]
            yield first[0], header
            for number, row in rows:
                if len(row) != len(header):
                    raise PipelineError(
                        f"data.path: {path} line {number} has {len(row)} fields but the header has {len(header)}; "
                        f"fix the row or set data.delimiter"
                    )
                yield number, row
    except (UnicodeDecodeError, csv.Error) as error:  # a binary file, or NUL bytes in the text
        raise PipelineError(f"data.path: {path} is not a UTF-8 CSV text file ({error}); export the table as CSV") from None


def label_codes(rows: Iterator[tuple[int, list[str]]], label_at: int, check: Any) -> tuple[np.ndarray, list[str]]:
    """A code per row (its label's position among the distinct labels, in order of appearance) and
    those labels; `check(line, row)` is called on every row (to validate its features)."""
    codes, seen = array("q"), dict[str, int]()
    for line, row in rows:
        check(line, row)
        codes.append(seen.setdefault(row[label_at], len(seen)))
    return np.frombuffer(codes, np.int64) if codes else np.zeros(0, np.int64), list(seen)


@dataclass(frozen=True, eq=False)
class CsvRows(Streamed):
    """Rows of one split of a CSV file; `records` holds their row numbers (from 0, ascending, so a
    split reads in file order) and `columns` the feature columns, read as float32."""

    path: str = ""
    columns: tuple[int, ...] = ()
    delimiter: str = ","

    def subset(self, positions: np.ndarray) -> CsvRows:
        """The rows at `positions`, in that order."""
        return replace(self, records=np.asarray(self.records, np.int64)[np.asarray(positions, np.int64)])

    def take(self, positions: list[int]) -> np.ndarray:
        """The examples at `positions`, preprocessed, from one pass over the file."""
        return in_asked_order(self.records, positions, self.example_shape, self.preprocessed)

    def dataset(
        self, labels: np.ndarray | None = None, *, shuffle_seed: int | None = None,
        shard: tuple[int, int] | None = None, cached: bool = False,
    ) -> Any:
        """The preprocessed rows (with `labels` when given) in file order, or shuffled within a
        bounded buffer reseeded each epoch; `shard` keeps every worker's own equal share of rows."""
        import tensorflow as tf

        keep = self.order(mixed=False, shard=shard)
        rows = np.asarray(self.records, np.int64)[keep]
        spec = tf.TensorSpec((None, *self.example_shape), tf.float32)
        data = tf.data.Dataset.from_generator(lambda: self.preprocessed(rows), output_signature=spec).unbatch()
        if labels is not None:
            data = tf.data.Dataset.zip((data, tf.data.Dataset.from_tensor_slices(np.asarray(labels)[keep])))
        if shuffle_seed is not None:
            data = data.shuffle(SHUFFLE_BUFFER, seed=shuffle_seed, reshuffle_each_iteration=True)
        return data

    def preprocessed(self, rows: np.ndarray) -> Iterator[np.ndarray]:
        """The features of `rows` (ascending) chunk by chunk, with the steps applied (in NumPy: a
        table's steps include clipping, which has no TensorFlow form here)."""
        for values in self.read(rows):
            for step in self.steps:
                values = step.apply(values)
            yield np.asarray(values, np.float32)

    def read(self, rows: np.ndarray) -> Iterator[np.ndarray]:
        """The raw features of `rows` (row numbers, ascending) as float32 arrays of up to CHUNK_ROWS rows."""
        chunk: list[list[str]] = []
        at = 0
        data = enumerate(row for _, row in csv_rows(Path(self.path), self.delimiter))
        next(data)  # the header
        for number, row in data:
            if at == len(rows):
                break
            if number - 1 == rows[at]:
                chunk.append([row[c] for c in self.columns])
                at += 1
                if len(chunk) == CHUNK_ROWS:
                    yield np.array(chunk, np.float32)
                    chunk = []
        if chunk:
            yield np.array(chunk, np.float32)

    def first_unreadable(self) -> tuple[str, str] | None:
        """Rows were checked when the labels were read: none is known to be unreadable."""
        return None

    def fingerprint(self) -> bytes:
        """The file's size and modification time, the rows, columns, shape and steps: no row is read."""
        stat = os.stat(self.path)
        digest = hashlib.sha256(repr((self.path, stat.st_size, stat.st_mtime_ns, self.columns, self.steps)).encode())
        digest.update(np.asarray(self.records, np.int64).tobytes())
        return digest.digest()
