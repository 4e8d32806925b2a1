"""Data sets fetched over the network: the Keras built-ins and TensorFlow Datasets.

Both keep the publisher's own train/test split. Where the network is out of reach, the error
names the offline sources (`idx`, `npz`) that read the same data from local files.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Literal, TypeVar

import numpy as np
from pydantic import Field, model_validator

from pipeline.data.arrays import in_file_order
from pipeline.data.dataset import Dataset, SplitParams, as_labels, given_split, pixels, prepared, split, with_channel
from pipeline.data.preprocessing import Rescale
from pipeline.data.tfds_records import TfdsExamples, decoded_mb, example_shape, input_feature, label_pass, tfds_builder
from pipeline.errors import PipelineError
from pipeline.plugin.schema import Plugin

log = logging.getLogger("pipeline")
T = TypeVar("T")

TFDS_MISSING = "tensorflow-datasets is not installed; pip install tensorflow-datasets, or use data=idx, npz or image_folder"
OFFLINE = (
    "offline, use data=idx data.path=DIR (MNIST-format IDX files) "
    "or data=npz data.path=FILE (arrays x_train, y_train, x_test, y_test)"
)


# Class names the Keras data sets document (MNIST's classes are its digits).
CLASSES = {
    "fashion_mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
    "cifar10": ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
}


class KerasParams(SplitParams):
    """One of the data sets `tf_keras.datasets` downloads (about 11 MB to 170 MB, cached)."""

    name: Literal["mnist", "fashion_mnist", "cifar10"] = Field(description="Keras built-in data set.")
    cache_dir: str | None = Field(None, description="Folder for the downloaded file (null: ~/.keras).")


class KerasSource(Plugin[KerasParams]):
    """MNIST, Fashion-MNIST (28x28x1) or CIFAR-10 (32x32x3), with their own 10,000-image test split."""

    def load(self, seed: int) -> Dataset:
        """Download once (Keras caches the file); pixels divided by 255, with a channel axis."""
        import tf_keras as keras

        loader = getattr(keras.datasets, self.config.name)
        try:
            (x_train, y_train), (x_test, y_test) = loader.load_data(cache_dir=self.config.cache_dir)
        except Exception as error:  # noqa: BLE001 - Keras wraps every network failure in a bare Exception
            reason = " ".join(str(error).split())[:200]
            raise PipelineError(f"data.name={self.config.name}: download failed ({reason}); {OFFLINE}") from None
        y_train, _ = as_labels(y_train, f"data.name={self.config.name}")
        y_test, _ = as_labels(y_test, f"data.name={self.config.name}")
        labels = CLASSES.get(self.config.name, ())
        data = given_split(with_channel(x_train), y_train, with_channel(x_test), y_test, self.config, seed, labels)
        return pixels(data)


class TfdsParams(SplitParams):
    """A TensorFlow Datasets name with (input, label) pairs; needs `pip install tensorflow-datasets`."""

    dataset: str = Field(min_length=1, description="TFDS name, e.g. mnist, beans or tf_flowers.")
    train_split: str = Field("train", min_length=1, description="TFDS split to train on.")
    test_split: str | None = Field("test", description="TFDS split to test on (null: split train_split by the fractions).")
    data_dir: str | None = Field(None, description="TFDS data folder (null: ~/tensorflow_datasets).")
    in_memory_mb: int = Field(
        1024, ge=0, description="Largest size of the splits' inputs as float32 (MB, from the data set's info) "
        "loaded into memory; larger splits stream from the TFDS files: labels read first, each split's examples "
        "as it is read (0: always stream).",
    )

    @model_validator(mode="after")
    def _installed(self) -> TfdsParams:
        # find_spec locates the package without importing it (and TensorFlow with it).
        if importlib.util.find_spec("tensorflow_datasets") is None:
            raise ValueError(TFDS_MISSING)
        return self


class TfdsSource(Plugin[TfdsParams]):
    """Any TFDS data set of same-sized examples: loaded whole into memory when it fits
    `in_memory_mb`, else streamed from the TFDS files (see `pipeline.data.tfds_records`)."""

    def load(self, seed: int) -> Dataset:
        """Images (uint8) divided by 255; other features as float32."""
        config = self.config
        builder = self.builder()
        splits = [config.train_split] + ([config.test_split] if config.test_split is not None else [])
        size_mb = self.checked(lambda: decoded_mb(builder, splits), "/".join(splits))
        stream = size_mb > config.in_memory_mb
        log.info(
            "data: TFDS %s %s, %.0f MB as float32: %s (data.in_memory_mb=%d)", config.dataset, "+".join(splits),
            size_mb, "streamed from the TFDS files" if stream else "loaded into memory", config.in_memory_mb,
        )
        if stream:
            return self.streamed(builder, seed)
        train = self.read(builder, config.train_split)
        if config.test_split is None:
            return pixels(split(*train, config, seed))
        return pixels(given_split(*train, *self.read(builder, config.test_split), config, seed))

    def builder(self) -> Any:
        """The data set's TFDS builder, its data prepared (downloaded the first time)."""
        try:
            import tensorflow_datasets  # noqa: F401 - only to say it is missing
        except ImportError:
            raise PipelineError(f"data.name=tfds: {TFDS_MISSING}") from None
        builder = self.checked(lambda: tfds_builder(self.config.dataset, self.config.data_dir), self.config.train_split)
        self.checked(builder.download_and_prepare, self.config.train_split)
        if builder.info.supervised_keys is None:
            raise PipelineError(f"{self.where}: the data set has no (input, label) supervised keys; pick one that has")
        return builder

    @property
    def where(self) -> str:
        """The config key errors name."""
        return f"data.dataset={self.config.dataset}"

    def checked(self, action: Callable[[], T], split_name: str) -> T:
        """`action()`, any TFDS failure (unknown name or split, no network) raised as one line."""
        try:
            return action()
        except Exception as error:  # noqa: BLE001 - TFDS raises many types for unknown names and network failures
            reason = " ".join(str(error).split())[:200]
            raise PipelineError(
                f"{self.where}: cannot load split '{split_name}' ({reason}); check the name and split, or {OFFLINE}"
            ) from None

    def read(self, builder: Any, split_name: str) -> tuple[np.ndarray, np.ndarray]:
        """One TFDS split, whole, as (inputs, label ids)."""
        import tensorflow_datasets as tfds

        x, y = self.checked(
            lambda: tfds.as_numpy(builder.as_dataset(split_name, as_supervised=True, batch_size=-1)), split_name
        )
        labels, _ = as_labels(y, self.where)
        return with_channel(x) if x.ndim >= 3 else np.asarray(x, np.float32), labels

    def streamed(self, builder: Any, seed: int) -> Dataset:
        """The splits drawn from one pass that reads the labels only; each split's examples stream
        from the TFDS files when read, scaled as in memory (8-bit values divided by 255)."""
        config = self.config
        shape = example_shape(builder)
        if shape is None:
            raise PipelineError(
                f"{self.where}: examples differ in size, so they cannot stream in batches; "
                "raise data.in_memory_mb or pick a data set of same-sized examples"
            )

        def examples(split_name: str) -> tuple[TfdsExamples, np.ndarray]:
            y, _ = as_labels(self.checked(lambda: label_pass(builder, split_name), split_name), self.where)
            table = TfdsExamples(np.arange(len(y)), shape, dataset_name=config.dataset,
                                 split_name=split_name, data_dir=config.data_dir)
            return table, y

        train, y_train = examples(config.train_split)
        if config.test_split is None:
            data, test = split(np.arange(len(y_train)), y_train, config, seed), None
        else:
            test, y_test = examples(config.test_split)
            data = given_split(np.arange(len(y_train)), y_train, np.arange(len(y_test)), y_test, config, seed)
        data = replace(data, **in_file_order(data, train, test))
        integer = np.issubdtype(np.dtype(builder.info.features[input_feature(builder)[0]].np_dtype), np.integer)
        return prepared(data, [Rescale(1 / 255)] if integer else [])
