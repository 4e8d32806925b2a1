"""Data sources: where the train, validation and test splits come from.

A source is a plugin in the `pipeline.data` entry-point group: a class with a `Config` schema and
`load(seed) -> Dataset`. The splits are deterministic for a given seed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from pydantic import Field, model_validator

from pipeline.schema import Params


@dataclass(frozen=True)
class Dataset:
    """Train/validation/test arrays; images are float32 in [0, 1], labels are int class ids."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one example, without the batch dimension."""
        return tuple(self.x_train.shape[1:])

    def fingerprint(self) -> str:
        """A short hash of every split, so results can be tied to the exact data."""
        digest = hashlib.sha256()
        for array in (self.x_train, self.y_train, self.x_val, self.y_val, self.x_test, self.y_test):
            digest.update(np.ascontiguousarray(array).tobytes())
        return digest.hexdigest()[:16]


class SplitParams(Params):
    """How a source divides its examples; shared by every source."""

    name: str = Field(description="Registered data source.")
    test_fraction: float = Field(0.2, gt=0, lt=1, description="Share of examples held out for the test split.")
    val_fraction: float = Field(0.1, ge=0, lt=1, description="Share of examples for validation during training.")

    @model_validator(mode="after")
    def _leaves_training_data(self) -> SplitParams:
        if self.test_fraction + self.val_fraction >= 0.9:
            raise ValueError("test_fraction + val_fraction must stay below 0.9 to leave training data")
        return self


def split(x: np.ndarray, y: np.ndarray, params: SplitParams, seed: int) -> Dataset:
    """Stratified, seeded train/validation/test split of `x` and `y`."""
    from sklearn.model_selection import train_test_split

    x_rest, x_test, y_rest, y_test = train_test_split(
        x, y, test_size=params.test_fraction, random_state=seed, stratify=y
    )
    val_share = params.val_fraction / (1 - params.test_fraction)
    if val_share > 0:
        x_train, x_val, y_train, y_val = train_test_split(
            x_rest, y_rest, test_size=val_share, random_state=seed, stratify=y_rest
        )
    else:
        x_train, y_train, x_val, y_val = x_rest, y_rest, x_rest[:0], y_rest[:0]
    return Dataset(x_train, y_train, x_val, y_val, x_test, y_test, num_classes=int(y.max()) + 1)


class DigitsSource:
    """scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes), shipped with the package."""

    Config: ClassVar[type[Params]] = SplitParams

    def __init__(self, config: SplitParams):
        self.config = config

    def load(self, seed: int) -> Dataset:
        """Images scaled to [0, 1] with a channel axis: shape (8, 8, 1)."""
        from sklearn.datasets import load_digits

        digits = load_digits()
        x = (digits.images / 16.0).astype(np.float32)[..., np.newaxis]
        return split(x, digits.target.astype(np.int64), self.config, seed)
