"""TFRecord files of `tf.train.Example`s holding an encoded image and its label: the format large
vision data sets come in.

The files are scanned once, without decoding an image: where each record starts and how long it
is, and its label (an integer class id or a class name). The split is chosen from that list as
`image_folder` chooses it from its files; a split then reads just its records (by offset) and
decodes them as `image_folder` decodes files, in memory or streamed by the same rule.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field, field_validator

from pipeline.data.dataset import Dataset, as_labels
from pipeline.data.images import ImageParams, decode_pixels, example_shape, image_data
from pipeline.data.streaming import Streamed
from pipeline.errors import PipelineError
from pipeline.plugin.fields import ExistingPath
from pipeline.plugin.schema import Plugin

# Record framing: uint64 length, uint32 CRC of the length, the data, uint32 CRC of the data.
HEADER, FOOTER = 12, 4


class TFRecordParams(ImageParams):
    """Which TFRecord files, and the feature names of the image bytes and the label."""

    path: ExistingPath = Field(description="A TFRecord file, or a folder whose *.tfrecord* files are read (sorted by name).")
    image_key: str = Field("image/encoded", min_length=1, description="Feature holding the encoded image (png, jpg, bmp, gif).")
    label_key: str = Field(
        "image/class/label", min_length=1, description="Feature holding the label: an integer class id or a class name."
    )

    @field_validator("path")
    @classmethod
    def _has_records(cls, path: str) -> str:
        if not record_files(Path(path)):
            raise ValueError(f"no *.tfrecord* file in {path}")
        return path


class TFRecordSource(Plugin[TFRecordParams]):
    """Images from TFRecord files; classes are the label ids, or the sorted class names."""

    def load(self, seed: int) -> Dataset:
        """Images (H, W, C) of pixel values divided by 255."""
        config = self.config
        records, raw_labels = scan(record_files(Path(config.path)), config.label_key)
        y, names = as_labels(np.array(raw_labels), f"data.label_key: feature '{config.label_key}'")
        size = config.image_size or image_of(records[0], config.image_key, config.color_mode).shape[:2]
        images = RecordImages(tuple(records), example_shape(size, config.color_mode), image_key=config.image_key)
        return image_data(images, y, config, seed, names)


@dataclass(frozen=True)
class RecordImages(Streamed):
    """Images of one split, each a record `FILE@OFFSET:LENGTH` read by offset and decoded as read."""

    image_key: str = "image/encoded"

    def decoded(self, record: Any) -> Any:
        """One record's image as float32 pixel values in [0, 255] (see `decode_pixels`)."""
        import tensorflow as tf

        serialized = tf.py_function(read_record, [record], tf.string)  # a byte range: no TensorFlow op reads one
        image = decode_pixels(image_bytes(serialized, self.image_key), self.example_shape[-1], self.example_shape[:2])
        image.set_shape(self.example_shape)
        return image

    def file_of(self, record: str) -> str:
        """The TFRecord file holding `record`."""
        return record.rsplit("@", 1)[0]


def image_bytes(serialized: Any, key: str) -> Any:
    """The encoded image of a serialized `tf.train.Example`, as a string tensor."""
    import tensorflow as tf

    return tf.io.parse_single_example(serialized, {key: tf.io.FixedLenFeature([], tf.string)})[key]


def image_of(record: str, key: str, color_mode: str) -> np.ndarray:
    """One record's image at its own size (to learn the size when none is configured)."""
    import tensorflow as tf

    channels = example_shape((1, 1), color_mode)[-1]
    return decode_pixels(image_bytes(tf.constant(read_record(record)), key), channels, None).numpy()


def record_files(path: Path) -> list[Path]:
    """The file at `path`, or the *.tfrecord* files in the folder `path`, sorted by name."""
    if path.is_file():
        return [path]
    return sorted(p for p in path.glob("*.tfrecord*") if p.is_file()) if path.is_dir() else []


def read_record(record: Any) -> bytes:
    """The serialized example of `FILE@OFFSET:LENGTH` (a str, bytes or a string tensor)."""
    text = record.numpy().decode() if hasattr(record, "numpy") else record.decode() if isinstance(record, bytes) else record
    path, span = text.rsplit("@", 1)
    offset, length = (int(part) for part in span.split(":"))
    with open(path, "rb") as handle:
        handle.seek(offset)
        return handle.read(length)


def scan(files: list[Path], label_key: str) -> tuple[list[str], list[Any]]:
    """Every record as `FILE@OFFSET:LENGTH` and its label, reading the files once (no image decoded)."""
    from tensorflow.core.example.example_pb2 import Example

    records: list[str] = []
    labels: list[Any] = []
    for path in files:
        with open(path, "rb") as handle:
            offset = 0
            while header := handle.read(HEADER):
                (length,) = struct.unpack("<Q", header[:8]) if len(header) == HEADER else (-1,)
                data = handle.read(length) if length >= 0 else b""
                if len(header) < HEADER or len(data) < length or len(handle.read(FOOTER)) < FOOTER:
                    raise PipelineError(f"data.path: {path} ends inside a record at byte {offset}; write the file again")
                example = Example.FromString(data)
                records.append(f"{path}@{offset + HEADER}:{length}")
                labels.append(label_of(example, label_key, path))
                offset += HEADER + length + FOOTER
    if not records:
        raise PipelineError(f"data.path: the TFRecord files hold no records ({', '.join(map(str, files))})")
    return records, labels


def label_of(example: Any, key: str, path: Path) -> Any:
    """The label feature of one example: its first integer, or its first string as text."""
    if key not in example.features.feature:
        found = ", ".join(sorted(example.features.feature)) or "none"
        raise PipelineError(f"data.label_key: no feature '{key}' in the records of {path} (features: {found})")
    feature = example.features.feature[key]
    if feature.int64_list.value:
        return int(feature.int64_list.value[0])
    if feature.bytes_list.value:
        return feature.bytes_list.value[0].decode()
    raise PipelineError(f"data.label_key: feature '{key}' in {path} holds no integer or text value; store the class there")
