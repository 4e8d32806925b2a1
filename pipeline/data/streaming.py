"""Splits too large for memory: files listed up front, decoded by `tf.data` as they are read.

A `Streamed` split stands where a `Dataset` holds an array (`x_train`, `x_val`, `x_test`). It
knows its length, shape and dtype without reading a file; indexing it (`x[:32]`, `x[indices]`)
decodes just those examples, which is what calibration, ranking and batch-norm samples take.
Whole-split consumers go through `Dataset.batches` (in order) and `DeviceSetup.dataset` (training), which stream it.
Turning it into one array (`np.asarray`) still works, for plugins written against arrays, but
loads every example and says so in the log.

Subclasses say how files become examples (`decoded`: image files, TFRecord records); the
order, shuffling, sharding, on-disk cache and batching are shared here.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeGuard, cast

import numpy as np

from pipeline.errors import PipelineError

if TYPE_CHECKING:  # preprocessing reads streamed splits in batches: a run-time import would be a cycle
    from pipeline.data.preprocessing import Step

log = logging.getLogger("pipeline")

# Decoded examples a shuffle buffer holds when the decoded split is cached on disk (and so read
# in one fixed order): bounded memory, mixing over a few thousand examples per step.
SHUFFLE_BUFFER = 2048
# Examples per batch when a whole split is run through a model to measure it.
MEASURE_BATCH = 256


@dataclass(frozen=True)
class Streamed:
    """One split as a list of records (file paths, or record indices) read on demand.

    `steps` are the preprocessing steps applied after decoding (empty for the raw inputs);
    `example_shape` the shape of one decoded example; `cache_decoded` whether decoded training
    examples may be cached on disk, and `cache_dir` where (the runner sets it beside the stage cache).
    """

    records: tuple[str, ...] | np.ndarray  # an array: row numbers of a table (see pipeline.data.csv_rows)
    example_shape: tuple[int, ...]
    steps: tuple[Step, ...] = ()
    cache_dir: str | None = None
    cache_decoded: bool = False

    # --- what consumers written for arrays read ---------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        """(examples, *example shape), as an array's would be."""
        return (len(self.records), *self.example_shape)

    @property
    def ndim(self) -> int:
        """Axes of the split, as an array's."""
        return 1 + len(self.example_shape)

    @property
    def dtype(self) -> np.dtype:
        """Examples come decoded as float32."""
        return np.dtype(np.float32)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: Any) -> np.ndarray:
        """Examples at `index` (an int, a slice or an array of positions), decoded now."""
        positions = np.arange(len(self.records))[index]
        if np.ndim(positions) == 0:
            return self.take([int(positions)])[0]
        return self.take([int(i) for i in positions])

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        log.warning(
            "    %d streamed examples loaded into memory as one array (%.0f MB): read data.batches() or "
            "data.examples() to stream them", len(self), len(self) * np.prod(self.example_shape) * 4 / 1e6,
        )
        whole = self.take(list(range(len(self.records))))
        return whole if dtype is None else whole.astype(dtype)

    # --- streaming ----------------------------------------------------------------------------
    def with_steps(self, steps: tuple[Step, ...]) -> Streamed:
        """The same records, with `steps` applied after decoding."""
        return replace(self, steps=steps)

    def with_cache(self, folder: str | None) -> Streamed:
        """The same split, with decoded examples cached under `folder` when training asks for a cache."""
        return replace(self, cache_dir=folder)

    def subset(self, positions: np.ndarray) -> Streamed:
        """The records at `positions`, in that order."""
        return replace(self, records=tuple(self.records[int(i)] for i in positions))

    def take(self, positions: list[int]) -> np.ndarray:
        """The examples at `positions` decoded, as one float32 array."""
        if not positions:
            return np.zeros((0, *self.example_shape), np.float32)
        batches = self.subset(np.asarray(positions)).batches(MEASURE_BATCH)
        return np.concatenate(list(batches))

    def batches(self, size: int = MEASURE_BATCH) -> Iterator[np.ndarray]:
        """The split in order, `size` examples at a time, as float32 arrays."""
        import tensorflow as tf

        try:
            yield from self.dataset().batch(size).prefetch(tf.data.AUTOTUNE).as_numpy_iterator()
        except read_errors() as error:
            raise unreadable(error, self) from None

    def dataset(
        self, labels: np.ndarray | None = None, *, shuffle_seed: int | None = None,
        shard: tuple[int, int] | None = None, cached: bool = False,
    ) -> Any:
        """The decoded, preprocessed examples (unbatched; `(x, label)` pairs when `labels` are given,
        one per record) as a `tf.data.Dataset`, in record order unless shuffled.

        `shard` = (workers, index) keeps every `workers`-th record from `index`: each worker reads
        its own files, all the same number of them. Shuffling permutes the record list each epoch
        (names, not pixels, so the whole list) before decoding. `cached` (with `cache_decoded` and
        a `cache_dir`) writes the decoded examples to disk on the first pass, in one fixed mixed
        order shared by every stage, and a bounded buffer then reshuffles them each epoch.
        """
        import tensorflow as tf

        cache = self.cache_file(shard) if cached and self.cache_decoded and self.cache_dir else None
        if cache is not None and not may_use_cache(cache):
            cache = None
        order = self.order(mixed=cache is not None, shard=shard)
        records = np.asarray(self.records)[order]
        decode = {"num_parallel_calls": tf.data.AUTOTUNE, "deterministic": True}
        if cache is None:
            data = tf.data.Dataset.from_tensor_slices(records if labels is None else (records, np.asarray(labels)[order]))
            if shuffle_seed is not None:
                data = data.shuffle(len(order), seed=shuffle_seed, reshuffle_each_iteration=True)
            return data.map(self.example if labels is None else self.element, **decode)
        # The cache holds the images only: every stage shares it, whatever labels (or a teacher's targets) it trains on.
        data = tf.data.Dataset.from_tensor_slices(records).map(self.example, **decode).cache(cache)
        if labels is not None:
            data = tf.data.Dataset.zip((data, tf.data.Dataset.from_tensor_slices(np.asarray(labels)[order])))
        if shuffle_seed is not None:
            data = data.shuffle(SHUFFLE_BUFFER, seed=shuffle_seed, reshuffle_each_iteration=True)
        return data

    def order(self, mixed: bool, shard: tuple[int, int] | None) -> np.ndarray:
        """Positions of the records to read: all in order, or mixed once in a fixed order (for the
        cache: files are often stored class by class), and of those every worker's own share."""
        order = np.random.default_rng(0).permutation(len(self.records)) if mixed else np.arange(len(self.records))
        if shard is not None:  # equal shards: every worker must take the same number of steps
            workers, index = shard
            order = order[: len(order) - len(order) % workers][index::workers]
        return order

    def cache_file(self, shard: tuple[int, int] | None) -> str:
        """The on-disk cache prefix of this split's decoded examples: named by the split's
        fingerprint (its files, sizes, times and steps) and the shard, so a changed file or step
        never reads a stale cache, and every stage training on the split reads the same one."""
        assert self.cache_dir is not None
        digest = hashlib.sha256(self.fingerprint())
        digest.update(repr(shard).encode())
        Path(self.cache_dir).mkdir(parents=True, exist_ok=True)
        return str(Path(self.cache_dir) / digest.hexdigest()[:16])

    def first_unreadable(self) -> tuple[str, str] | None:
        """The first record that cannot be read or decoded, and why; None when every one can.

        Decodes the whole split in parallel, skipping failures, so only called once reading failed:
        a failing element inside a `tf.data` pipeline says what went wrong but not which file.
        """
        import tensorflow as tf

        positions = tf.data.Dataset.from_tensor_slices((np.asarray(self.records), np.arange(len(self.records))))
        # the maximum makes every pixel a dependency: an unused decode could be pruned from the graph
        decoded = positions.map(lambda record, i: (i, tf.reduce_max(self.decoded(record))),
                                num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
        read = {int(i) for i, _ in decoded.ignore_errors().as_numpy_iterator()}
        missing = next((i for i in range(len(self.records)) if i not in read), None)
        if missing is None:
            return None
        record = self.records[missing]
        try:
            self.decoded(tf.constant(record))
        except read_errors() as error:
            return record, reason_of(error)
        return record, "it failed inside the input pipeline only"

    def element(self, record: Any, label: Any) -> Any:
        """A record's example and its label (the tf.data map function)."""
        return self.example(record), label

    def example(self, record: Any) -> Any:
        """One record decoded, then preprocessed, as a float32 tensor of `example_shape`."""
        x = self.decoded(record)
        for step in self.steps:
            x = step.apply(x)
        return x

    def decoded(self, record: Any) -> Any:
        """One record as raw float32 values of `example_shape` (a tf.data map function)."""
        raise NotImplementedError

    # --- identity -----------------------------------------------------------------------------
    def fingerprint(self) -> bytes:
        """What identifies the split without reading an example: its records, with each file's size
        and modification time, the example shape and the steps."""
        digest = hashlib.sha256(repr((type(self).__name__, self.example_shape, self.steps)).encode())
        stamps: dict[str, str] = {}
        for record in self.records:
            path = self.file_of(record)
            if path not in stamps:
                stat = os.stat(path)
                stamps[path] = f"{stat.st_size}:{stat.st_mtime_ns}"
            digest.update(f"{record}|{stamps[path]}".encode())
        return digest.digest()

    def file_of(self, record: str) -> str:
        """The file a record is read from (the record itself: a file path)."""
        return record


def read_errors() -> tuple[type[Exception], ...]:
    """What TensorFlow raises for a file that is missing, unreadable, or not an image it can decode."""
    import tensorflow as tf

    errors = tf.errors
    return (errors.InvalidArgumentError, errors.NotFoundError, errors.PermissionDeniedError, errors.DataLossError,
            errors.UnknownError)


def reason_of(error: Exception) -> str:
    """The first line of a TensorFlow error, without the name of the graph function it ran in."""
    text = getattr(error, "message", str(error)).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text.split("}}", 1)[-1].strip() if text.startswith("{{") else text


def unreadable(error: Exception, *splits: Any) -> Exception:
    """The error to raise when reading `splits` failed with `error`: one line naming the first
    file of a streamed split that cannot be read or decoded, else `error` as it came."""
    for split in splits:
        found = split.first_unreadable() if is_streamed(split) else None
        if found is not None:
            record, reason = found
            return PipelineError(f"data.path: cannot decode image {record} ({reason}); remove or replace the file")
    return error


# Decoded-cache prefixes this process writes. A run holds the lock of a prefix until it ends, so a
# second run sharing the folder never writes the same files at once (tf.data would fail it), and a
# run that died mid-write leaves a lock the system releases rather than a lockfile that blocks every later run.
_WRITING: dict[str, int] = {}


def may_use_cache(prefix: str) -> bool:
    """Whether this process may read or write the decoded cache at `prefix`: yes once complete (its
    index is written last), or when this process holds the writer's lock; no while another run
    holds it (this one then decodes as it reads)."""
    if Path(prefix + ".index").exists():
        return True
    if prefix not in _WRITING:
        handle = os.open(prefix + ".lock", os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(handle)
            log.info("    another run is writing the decoded cache %s: this one decodes as it reads", prefix)
            return False
        _WRITING[prefix] = handle
        for partial in Path(prefix).parent.glob(Path(prefix).name + "_*.tempstate*"):  # from a run that died
            partial.unlink(missing_ok=True)
    # tf.data's own marker of a writer: left by a run that died, or by this process's last, unfinished pass
    for marker in Path(prefix).parent.glob(Path(prefix).name + "_*.lockfile"):
        marker.unlink(missing_ok=True)
    return True


def in_asked_order(
    records: Any, positions: Any, example_shape: tuple[int, ...], read: Any,
) -> np.ndarray:
    """The examples at `positions` of `records`, each distinct record read once: `read(sorted_records)`
    yields their preprocessed batches in record order (one pass down a file), put back in the asked order."""
    asked = np.asarray(records, np.int64)[np.asarray(positions, np.int64)]
    wanted = np.unique(asked)
    chunks = list(read(wanted))
    values = np.concatenate(chunks) if chunks else np.zeros((0, *example_shape), np.float32)
    return values[np.searchsorted(wanted, asked)]


def is_streamed(x: Any) -> TypeGuard[Streamed]:
    """Whether a split is streamed from files rather than held as an array."""
    return isinstance(x, Streamed)


def as_split(x: Streamed) -> np.ndarray:
    """`x` typed as the array a `Dataset` field holds: it answers what consumers of arrays read
    (len, shape, dtype, indexing, np.asarray), and `is_streamed` tells the two apart."""
    return cast(np.ndarray, x)


def in_batches(x: Any, size: int = MEASURE_BATCH) -> Iterator[np.ndarray]:
    """An array's or a streamed split's examples in order, `size` at a time."""
    if is_streamed(x):
        yield from x.batches(size)
        return
    for start in range(0, len(x), size):
        yield x[start : start + size]
