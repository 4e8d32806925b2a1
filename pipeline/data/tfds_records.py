"""TensorFlow Datasets splits too large for memory: labels read in one pass, examples streamed from the TFDS files.

The pass reads every example's label and leaves images encoded (`tfds.decode.SkipDecoding`), so
it costs little more than reading the files. The split is drawn from the labels with the same
seeded, stratified draw as in memory, so the same examples land in the same split; each split is
then an ascending list of example numbers (positions in the TFDS split, read in its fixed file
order), and reading it enumerates the TFDS split, keeps the listed examples and decodes only those.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from pipeline.data.streaming import SHUFFLE_BUFFER, Streamed, in_asked_order

# Labels read per batch in the label pass.
LABEL_BATCH = 4096


@functools.lru_cache(maxsize=8)
def tfds_builder(dataset: str, data_dir: str | None) -> Any:
    """The TFDS builder of `dataset` (prepared data under `data_dir`), built once per process."""
    import tensorflow_datasets as tfds

    return tfds.builder(dataset, data_dir=data_dir)


def input_feature(builder: Any) -> tuple[str, str]:
    """The (input, label) feature names: the data set's supervised keys."""
    keys = builder.info.supervised_keys
    return str(keys[0]), str(keys[1])


def example_shape(builder: Any) -> tuple[int, ...] | None:
    """Shape of one input as the model sees it (a channel axis added to 2-D images); None when
    examples differ in size."""
    shape = tuple(builder.info.features[input_feature(builder)[0]].shape)
    if any(side is None for side in shape):
        return None
    return tuple(int(side) for side in (*shape, 1)) if len(shape) == 2 else tuple(int(side) for side in shape)


def decoded_mb(builder: Any, splits: list[str]) -> float:
    """MB the inputs of `splits` take as float32, from the builder's info without reading the data:
    examples times values per example; the data set's size on disk when examples differ in size."""
    shape = example_shape(builder)
    if shape is None:
        return int(builder.info.dataset_size) / 2**20
    examples = sum(builder.info.splits[name].num_examples for name in splits)
    return examples * int(np.prod(shape)) * 4 / 2**20


def skip_images(builder: Any) -> dict[str, Any] | None:
    """Decoders that leave the input feature encoded when it is an image (bytes until a split reads it)."""
    import tensorflow_datasets as tfds

    key = input_feature(builder)[0]
    return {key: tfds.decode.SkipDecoding()} if isinstance(builder.info.features[key], tfds.features.Image) else None


def read_split(builder: Any, split_name: str) -> Any:
    """The examples of TFDS split `split_name` in their fixed file order, images still encoded."""
    import tensorflow_datasets as tfds

    # no autocache: a split larger than memory must not be cached whole by TFDS
    read_config = tfds.ReadConfig(try_autocache=False)
    return builder.as_dataset(split_name, shuffle_files=False, decoders=skip_images(builder), read_config=read_config)


def label_pass(builder: Any, split_name: str) -> np.ndarray:
    """Every label of split `split_name`, in file order, without decoding an image."""
    label_key = input_feature(builder)[1]
    labels = read_split(builder, split_name).map(lambda example: example[label_key]).batch(LABEL_BATCH)
    chunks = list(labels.as_numpy_iterator())
    return np.concatenate(chunks) if chunks else np.zeros(0, np.int64)


@dataclass(frozen=True, eq=False)
class TfdsExamples(Streamed):
    """Examples of one TFDS split; `records` holds their positions in it (from 0, ascending, so a
    split reads in one pass down the files)."""

    dataset_name: str = ""
    split_name: str = "train"
    data_dir: str | None = None

    def subset(self, positions: np.ndarray) -> TfdsExamples:
        """The examples at `positions`, in that order."""
        return replace(self, records=np.asarray(self.records, np.int64)[np.asarray(positions, np.int64)])

    def take(self, positions: list[int]) -> np.ndarray:
        """The examples at `positions`, preprocessed, from one pass over the split."""
        return in_asked_order(self.records, positions, self.example_shape,
                              lambda wanted: self.read(wanted).batch(LABEL_BATCH).as_numpy_iterator())

    def dataset(
        self, labels: np.ndarray | None = None, *, shuffle_seed: int | None = None,
        shard: tuple[int, int] | None = None, cached: bool = False,
    ) -> Any:
        """The preprocessed examples (with `labels` when given) in record order, or shuffled within
        a bounded buffer reseeded each epoch; `shard` keeps every worker's own equal share."""
        import tensorflow as tf

        keep = self.order(mixed=False, shard=shard)
        rows = np.asarray(self.records, np.int64)[keep]
        if np.all(np.diff(rows) > 0):
            data = self.read(rows)
        else:  # a sample in drawn order (a few hundred examples): decoded once, held as an array
            data = tf.data.Dataset.from_tensor_slices(self.take([int(i) for i in keep]))
        if labels is not None:
            data = tf.data.Dataset.zip((data, tf.data.Dataset.from_tensor_slices(np.asarray(labels)[keep])))
        if shuffle_seed is not None:
            data = data.shuffle(SHUFFLE_BUFFER, seed=shuffle_seed, reshuffle_each_iteration=True)
        return data

    def read(self, rows: np.ndarray) -> Any:
        """The examples at positions `rows` (ascending) of the split, decoded and preprocessed, as a
        `tf.data.Dataset`: the split is enumerated, and reading stops after the last wanted example."""
        import tensorflow as tf

        if not len(rows):
            return tf.data.Dataset.from_tensor_slices(np.zeros((0, *self.example_shape), np.float32))
        builder = tfds_builder(self.dataset_name, self.data_dir)
        key = input_feature(builder)[0]
        wanted = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(tf.constant(rows, tf.int64), tf.ones(len(rows), tf.int64)), 0
        )
        last = int(rows[-1])
        numbered = read_split(builder, self.split_name).enumerate()
        kept = numbered.take_while(lambda i, _: i <= last).filter(lambda i, _: wanted.lookup(i) > 0)
        return kept.map(lambda _, example: self.example(example[key]), num_parallel_calls=tf.data.AUTOTUNE,
                        deterministic=True)

    def decoded(self, record: Any) -> Any:
        """One example's input (encoded image bytes, or the feature's values) as float32 of `example_shape`."""
        import tensorflow as tf

        builder = tfds_builder(self.dataset_name, self.data_dir)
        key = input_feature(builder)[0]
        values = builder.info.features[key].decode_example(record) if skip_images(builder) else record
        return tf.reshape(tf.cast(values, tf.float32), self.example_shape)

    def first_unreadable(self) -> tuple[str, str] | None:
        """TFDS checks its own records as it reads them: none is known to be unreadable."""
        return None

    def fingerprint(self) -> bytes:
        """The data set, its version, the split, its size, the examples and the steps: no example is read."""
        info = tfds_builder(self.dataset_name, self.data_dir).info
        identity = (self.dataset_name, str(info.version), self.split_name, self.data_dir, info.dataset_size,
                    self.example_shape, self.steps)
        digest = hashlib.sha256(repr(identity).encode())
        digest.update(np.asarray(self.records, np.int64).tobytes())
        return digest.digest()
