"""The data every source hands to the runner, and the splitting and scaling all sources share.

Images have a channel axis (N, H, W, C); tabular data is (N, features); model inputs are float32,
but for text: (N, sequence_length) int32 token ids, with the fitted tokenizer kept beside them;
labels are int64 class ids from 0 (regression: float32 targets standardised on the training split,
`target_scale` keeping their mean and standard deviation; multi-label: (N, labels) float32 0/1).
Class-id splits are stratified; all are deterministic for a given seed, and
any statistics used for scaling come from the training split only. Each source declares its
scaling as a `Preprocessing` and keeps the raw test inputs, so a model that takes raw inputs can
be measured on exactly what a user would feed it.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from pipeline.data.preprocessing import Preprocessing, Rescale, Step, fit_steps, value_range
from pipeline.data.streaming import MEASURE_BATCH, in_batches, is_streamed
from pipeline.data.tokenizer import Tokenizer
from pipeline.errors import PipelineError
from pipeline.plugin.schema import Params

Normalize = Literal["unit", "standard", "none"]
NORMALIZE_HELP = (
    "unit: scale to [0, 1] (8-bit values / 255, floats already in [0, 1] kept, others min-max "
    "scaled); standard: zero mean, unit variance per feature; none: as stored. Statistics come "
    "from the training split."
)


@dataclass(frozen=True)
class Dataset:
    """Train/validation/test model inputs (float32, or int32 token ids), int class ids, and how raw inputs became them.

    `x_test_raw` holds the test inputs before `preprocessing` (None when it has no steps);
    `tokenizer` turned texts into the token ids (None for other data).
    A split too large for memory is a `pipeline.data.streaming.Streamed` in place of the array
    (a list of files decoded as read); `streams` says so. Consumers that read a whole split go
    through `batches` (in order, to measure) or, for training, `DeviceSetup.dataset`, which
    serve arrays and streamed splits alike; indexing a split (`x_train[:32]`) works for both.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    class_names: tuple[str, ...] = ()
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    x_test_raw: np.ndarray | None = None
    tokenizer: Tokenizer | None = None
    task: str = "classification"
    target_scale: tuple[float, float] | None = None  # regression: (mean, std) of the training targets

    def in_unit(self, values: np.ndarray) -> np.ndarray:
        """Standardised regression targets or outputs back in the labels' own unit (others unchanged)."""
        if self.target_scale is None:
            return values
        mean, std = self.target_scale
        return np.asarray(values, np.float64) * std + mean

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one example, without the batch dimension."""
        return tuple(self.x_train.shape[1:])

    @property
    def labels(self) -> tuple[str, ...]:
        """A name per class id: the source's class names, else the ids as text."""
        return self.class_names or tuple(str(i) for i in range(self.num_classes))

    @property
    def streams(self) -> bool:
        """Whether the splits are streamed from disk rather than held in memory."""
        return is_streamed(self.x_train)

    def split_named(self, name: Literal["train", "val", "test"]) -> tuple[np.ndarray, np.ndarray]:
        """The inputs and labels of split `name`."""
        return {
            "train": (self.x_train, self.y_train), "val": (self.x_val, self.y_val), "test": (self.x_test, self.y_test),
        }[name]

    def batches(self, name: Literal["train", "val", "test"], size: int = MEASURE_BATCH) -> Iterator[np.ndarray]:
        """The inputs of split `name` in order, `size` at a time (float32 arrays): a whole split run
        through a model without holding it in memory when it streams."""
        return in_batches(self.split_named(name)[0], size)

    def with_cache(self, folder: str | None) -> Dataset:
        """Streamed splits that may cache their decoded examples under `folder` (arrays stay as they are)."""
        if not self.streams:
            return self
        cached = {key: getattr(self, key).with_cache(folder) for key in ("x_train", "x_val", "x_test", "x_test_raw")
                  if is_streamed(getattr(self, key))}
        return replace(self, **cached)

    def test_inputs(self, raw: bool) -> np.ndarray:
        """The test inputs as a model taking raw (True) or preprocessed (False) inputs sees them."""
        return self.x_test_raw if raw and self.x_test_raw is not None else self.x_test

    def raw(self) -> Dataset:
        """The splits as a model that takes raw inputs sees them: the kept raw test inputs, and the
        training and validation inputs recovered through the inverse steps (for calibration)."""
        if not self.preprocessing.steps:
            return self
        undo = self.preprocessing.invert if not self.streams else lambda x: x.with_steps(())
        return replace(
            self, x_train=undo(self.x_train), x_val=undo(self.x_val), x_test=self.test_inputs(raw=True),
            preprocessing=replace(self.preprocessing, steps=()), x_test_raw=None,
        )

    def fingerprint(self) -> str:
        """A short hash of every split and the steps, so results can be tied to the exact data."""
        digest = hashlib.sha256()
        for array in (self.x_train, self.y_train, self.x_val, self.y_val, self.x_test, self.y_test):
            # a streamed split is known by its files' names, sizes and times: no image is read
            digest.update(array.fingerprint() if is_streamed(array) else np.ascontiguousarray(array).tobytes())
        if self.preprocessing.steps:  # the same model inputs can come from different raw inputs
            digest.update(self.preprocessing.fingerprint_text().encode())
        if self.tokenizer is not None:  # the same ids mean other words under another vocabulary
            digest.update(self.tokenizer.fingerprint_text().encode())
        if self.task != "classification":  # the same labels may be values or label flags
            digest.update(f"{self.task} {self.target_scale}".encode())
        return digest.hexdigest()[:16]


def check_finite(data: Dataset, source: str) -> None:
    """Raise PipelineError when any split holds NaN or infinite values: training would only diverge later."""
    if data.streams:  # decoded from 8-bit image files: always finite
        return
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
    if y_train.ndim == 2:  # multi-label: one output per label column
        return Dataset(x_train, y_train, x_val, y_val, x_test, y_test, y_train.shape[1], class_names, task="multilabel")
    if y_train.dtype.kind == "f":  # regression: one output, the value
        return Dataset(x_train, y_train, x_val, y_val, x_test, y_test, 1, class_names, task="regression")
    num_classes = max(int(y_train.max()), int(y_test.max())) + 1
    return Dataset(x_train, y_train, x_val, y_val, x_test, y_test, num_classes, class_names)


def holdout(x: np.ndarray, y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, ...]:
    """`x_rest, x_held, y_rest, y_held`: a stratified, seeded share `fraction` held out."""
    from sklearn.model_selection import train_test_split

    if not stratifiable(y):  # values and label sets: a plain seeded draw
        return tuple(train_test_split(x, y, test_size=fraction, random_state=seed))
    check_stratifiable(y, math.ceil(fraction * len(y)))  # scikit-learn rounds the held-out count up
    return tuple(train_test_split(x, y, test_size=fraction, random_state=seed, stratify=y))


def stratifiable(y: np.ndarray) -> bool:
    """Whether `y` are class ids (stratified draws); regression values and multi-label rows are not."""
    return y.ndim == 1 and y.dtype.kind in "iu"


def subsample(x: np.ndarray, y: np.ndarray, count: int | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded, stratified subset of `count` examples (all of them when count is None or larger)."""
    if count is None or count >= len(y):
        return x, y
    from sklearn.model_selection import train_test_split

    if stratifiable(y):
        check_stratifiable(y, count)
    _, x_kept, _, y_kept = train_test_split(x, y, test_size=count, random_state=seed, stratify=y if stratifiable(y) else None)
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


def with_channel(x: np.ndarray) -> np.ndarray:
    """(N, H, W) grayscale images get a channel axis; tables (N, F) and (N, H, W, C) stay."""
    return x[..., np.newaxis] if x.ndim == 3 else x


def pixels(data: Dataset) -> Dataset:
    """`data` with 8-bit pixel values scaled to [0, 1] (divided by 255); other values kept as they are."""
    return prepared(data, [Rescale(1 / 255)] if np.issubdtype(data.x_train.dtype, np.integer) else [])


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


def normalize(data: Dataset, mode: Normalize, **described: Any) -> Dataset:
    """Scale every split with `mode`'s steps, fitted on the training split only (no test-set leakage).

    `described` fills in the rest of the `Preprocessing` (features, label, color_mode, resize).
    """
    if data.streams and len(data.x_train):  # read in batches: prepared cannot take the minimum of a split
        described.setdefault("value_range", value_range(data.x_train))
    return prepared(data, fit_steps(data.x_train, mode), **described)


def prepared(data: Dataset, steps: list[Step], **described: Any) -> Dataset:
    """`data` (raw inputs in every split) with `steps` applied, the raw test inputs kept.

    Images get their colour mode from the channel count unless `described` names it.
    """
    modes = {1: "grayscale", 3: "rgb"}
    described.setdefault("color_mode", modes.get(data.x_train.shape[-1]) if data.x_train.ndim == 4 else None)
    if data.streams:  # unless given, the range 8-bit image files can hold, known without decoding them all
        described.setdefault("value_range", (0.0, 255.0))
    elif len(data.x_train):
        described["value_range"] = (float(data.x_train.min()), float(data.x_train.max()))
    preprocessing = Preprocessing(tuple(steps), **described)
    apply = preprocessing.apply if not data.streams else lambda x: x.with_steps(tuple(steps))
    raw_test = data.x_test if data.streams else np.asarray(data.x_test, np.float32)
    return replace(
        data,
        x_train=apply(data.x_train),
        x_val=apply(data.x_val),
        x_test=apply(raw_test),
        preprocessing=preprocessing,
        x_test_raw=raw_test if steps else None,
    )


def standardized_targets(data: Dataset) -> Dataset:
    """Regression `data` with every split's targets standardised by the training split's mean and deviation.

    Training on targets of unit scale keeps the loss and the learning rate in a sensible range
    whatever the unit; the statistics travel with the data (and the export) to undo it.
    """
    mean, std = float(np.mean(data.y_train)), float(np.std(data.y_train))
    std = std if std > 0 else 1.0  # a constant target: nothing to scale
    scaled = {key: ((getattr(data, key) - mean) / std).astype(np.float32) for key in ("y_train", "y_val", "y_test")}
    return replace(data, **scaled, target_scale=(mean, std))
