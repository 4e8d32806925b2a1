"""The data every source hands to the runner, and the splitting and scaling all sources share.

Images are float32 in [0, 1] with a channel axis (N, H, W, C); tabular data is (N, features);
labels are int64 class ids from 0. Splits are stratified and deterministic for a given seed, and
any statistics used for scaling come from the training split only.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from pipeline.errors import PipelineError
from pipeline.schema import Params

Normalize = Literal["unit", "standard", "none"]
NORMALIZE_HELP = (
    "unit: scale to [0, 1] (8-bit values / 255, floats already in [0, 1] kept, others min-max "
    "scaled); standard: zero mean, unit variance per feature; none: as stored. Statistics come "
    "from the training split."
)


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
    class_names: tuple[str, ...] = ()

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


def check_finite(data: Dataset, source: str) -> None:
    """Raise PipelineError when any split holds NaN or infinite values: training would only diverge later."""
    for split_name, x in (("training", data.x_train), ("validation", data.x_val), ("test", data.x_test)):
        if x.dtype.kind == "f" and not np.isfinite(x).all():
            bad = int((~np.isfinite(x.reshape(len(x), -1))).any(axis=1).sum())
            raise PipelineError(
                f"data.name={source}: {bad} {split_name} examples hold NaN or infinite values; "
                "fill in or drop them in the data source"
            )


class SplitParams(Params):
    """How a source divides its examples; shared by every source."""

    name: str = Field(description="Registered data source.")
    test_fraction: float = Field(0.2, gt=0, lt=1, description="Share of examples held out for the test split.")
    val_fraction: float = Field(0.1, ge=0, lt=1, description="Share of examples for validation during training.")
    max_examples: int | None = Field(
        None, ge=10, description="Use a seeded, stratified subset of this many examples (null: all)."
    )

    @model_validator(mode="after")
    def _leaves_training_data(self) -> SplitParams:
        if self.test_fraction + self.val_fraction >= 0.9:
            raise ValueError("test_fraction + val_fraction must stay below 0.9 to leave training data")
        return self


def split(x: np.ndarray, y: np.ndarray, params: SplitParams, seed: int, class_names: tuple[str, ...] = ()) -> Dataset:
    """Stratified, seeded train/validation/test split of `x` and `y`."""
    x, y = subsample(x, y, params.max_examples, seed)
    x_rest, x_test, y_rest, y_test = holdout(x, y, params.test_fraction, seed)
    val_share = params.val_fraction / (1 - params.test_fraction)  # of what remains after the test split
    return with_validation(x_rest, y_rest, x_test, y_test, val_share, seed, class_names)


def given_split(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    params: SplitParams,
    seed: int,
    class_names: tuple[str, ...] = (),
) -> Dataset:
    """A source's own train/test split kept as is; `max_examples` limits the training split."""
    x_train, y_train = subsample(x_train, y_train, params.max_examples, seed)
    return with_validation(x_train, y_train, x_test, y_test, params.val_fraction, seed, class_names)


def with_validation(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    val_share: float,
    seed: int,
    class_names: tuple[str, ...] = (),
) -> Dataset:
    """A Dataset from train and test splits, with the share `val_share` of training examples held out for validation."""
    if val_share > 0:
        x_train, x_val, y_train, y_val = holdout(x_train, y_train, val_share, seed)
    else:
        x_val, y_val = x_train[:0], y_train[:0]
    num_classes = max(int(y_train.max()), int(y_test.max())) + 1
    return Dataset(x_train, y_train, x_val, y_val, x_test, y_test, num_classes, class_names)


def holdout(x: np.ndarray, y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, ...]:
    """`x_rest, x_held, y_rest, y_held`: a stratified, seeded share `fraction` held out."""
    from sklearn.model_selection import train_test_split

    check_stratifiable(y, math.ceil(fraction * len(y)))  # scikit-learn rounds the held-out count up
    return tuple(train_test_split(x, y, test_size=fraction, random_state=seed, stratify=y))


def subsample(x: np.ndarray, y: np.ndarray, count: int | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded, stratified subset of `count` examples (all of them when count is None or larger)."""
    if count is None or count >= len(y):
        return x, y
    from sklearn.model_selection import train_test_split

    check_stratifiable(y, count)
    _, x_kept, _, y_kept = train_test_split(x, y, test_size=count, random_state=seed, stratify=y)
    return x_kept, y_kept


def check_stratifiable(y: np.ndarray, held: int) -> None:
    """A stratified draw of `held` examples needs two of every class and room for each class on both sides."""
    counts = np.bincount(y)
    present = counts[counts > 0]
    if present.min() < 2 or held < len(present) or len(y) - held < len(present):
        raise PipelineError(
            f"data: cannot split {len(y)} examples of {len(present)} classes (the smallest class has "
            f"{present.min()}) so that every split holds every class; add examples or change "
            "data.test_fraction, data.val_fraction or data.max_examples"
        )


def as_images(x: np.ndarray) -> np.ndarray:
    """(N, H, W) or (N, H, W, C) pixels -> float32 in [0, 1] with a channel axis."""
    if x.ndim == 3:
        x = x[..., np.newaxis]
    if np.issubdtype(x.dtype, np.integer):
        return (x / 255.0).astype(np.float32)
    return x.astype(np.float32)


def as_labels(y: np.ndarray, where: str) -> tuple[np.ndarray, tuple[str, ...]]:
    """Labels as int64 ids from 0, and class names when the labels were strings.

    Integer labels keep their values (class 3 stays 3); text labels are numbered in sorted order.
    """
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:  # Keras' CIFAR-10 labels come as a column
        y = y[:, 0]
    if y.ndim != 1:
        raise PipelineError(f"{where}: labels must be one class id per example, got shape {y.shape}")
    if y.dtype.kind in "US" or y.dtype == object:
        names, ids = np.unique(y.astype(str), return_inverse=True)
        return ids.astype(np.int64), tuple(names)
    if y.dtype.kind == "f" and np.all(np.mod(y, 1) == 0):
        y = y.astype(np.int64)
    if y.dtype.kind not in "iu" or (len(y) and y.min() < 0):
        raise PipelineError(f"{where}: labels must be class ids 0, 1, 2, ... or class names, got {y.dtype} values")
    return y.astype(np.int64), ()


def normalize(data: Dataset, mode: Normalize) -> Dataset:
    """Scale every split with statistics of the training split only (no test-set leakage)."""
    if mode == "none":
        scale = _identity(data.x_train)
    elif mode == "standard":
        scale = _standardize(data.x_train)
    else:
        scale = _to_unit(data.x_train)
    return replace(data, x_train=scale(data.x_train), x_val=scale(data.x_val), x_test=scale(data.x_test))


def _identity(_train: np.ndarray):
    return lambda x: x.astype(np.float32)


def _standardize(train: np.ndarray):
    mean = train.mean(axis=0, dtype=np.float64)
    std = train.std(axis=0, dtype=np.float64)
    std[std == 0] = 1.0  # a constant feature carries no information; keep it at zero
    return lambda x: ((x - mean) / std).astype(np.float32)


def _to_unit(train: np.ndarray):
    if np.issubdtype(train.dtype, np.integer) and train.min() >= 0 and train.max() <= 255:
        return lambda x: (x / 255.0).astype(np.float32)
    low, high = float(train.min()), float(train.max())
    if low >= 0 and high <= 1:
        return lambda x: x.astype(np.float32)
    span = high - low or 1.0
    return lambda x: np.clip((x - low) / span, 0, 1).astype(np.float32)
