"""Data sets fetched over the network: the Keras built-ins and TensorFlow Datasets.

Both keep the publisher's own train/test split. Where the network is out of reach, the error
names the offline sources (`idx`, `npz`) that read the same data from local files.
"""

from __future__ import annotations

import importlib.util
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from pipeline.data.dataset import Dataset, SplitParams, as_labels, given_split, pixels, split, with_channel
from pipeline.errors import PipelineError
from pipeline.plugin.schema import Plugin

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

    @model_validator(mode="after")
    def _installed(self) -> TfdsParams:
        # find_spec locates the package without importing it (and TensorFlow with it).
        if importlib.util.find_spec("tensorflow_datasets") is None:
            raise ValueError(TFDS_MISSING)
        return self


class TfdsSource(Plugin[TfdsParams]):
    """Any TFDS data set of same-sized examples, loaded whole into memory."""

    def load(self, seed: int) -> Dataset:
        """Images (uint8) divided by 255; other features as float32."""
        config = self.config
        train = self.read(config.train_split)
        if config.test_split is None:
            return pixels(split(*train, config, seed))
        return pixels(given_split(*train, *self.read(config.test_split), config, seed))

    def read(self, split_name: str) -> tuple[np.ndarray, np.ndarray]:
        """One TFDS split as (inputs, label ids)."""
        try:
            import tensorflow_datasets as tfds
        except ImportError:
            raise PipelineError(f"data.name=tfds: {TFDS_MISSING}") from None
        where = f"data.dataset={self.config.dataset}"
        try:
            x, y = tfds.as_numpy(
                tfds.load(self.config.dataset, split=split_name, as_supervised=True, batch_size=-1, data_dir=self.config.data_dir)
            )
        except Exception as error:  # noqa: BLE001 - TFDS raises many types for unknown names and network failures
            reason = " ".join(str(error).split())[:200]
            raise PipelineError(f"{where}: cannot load split '{split_name}' ({reason}); check the name and split, or {OFFLINE}") from None
        labels, _ = as_labels(y, where)
        return with_channel(x) if x.ndim >= 3 else np.asarray(x, np.float32), labels


