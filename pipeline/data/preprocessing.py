"""What a data source does to raw inputs before the model sees them, as a declared, serialisable value.

Every source records its steps (dividing by 16 or 255, min-max scaling, per-feature mean and
standard deviation from the training split) with what a raw input is (feature names and order,
image colour mode and how other sizes are resized). The same description scales the splits, is
written to the export's JSON, builds the Keras layers that fold the steps into a model, and lets
`pipeline.predict` prepare raw inputs for a model that takes preprocessed ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

# How image_folder brings an image to the input size (tf.image.resize with these settings).
RESIZE = "bilinear, antialias, on pixel values 0-255 (tf.image.resize)"


@dataclass(frozen=True)
class Rescale:
    """`x * scale + offset`, the same two numbers for every value."""

    scale: float
    offset: float = 0.0
    op: ClassVar[str] = "rescale"
    per_feature: ClassVar[bool] = False

    def apply(self, x: np.ndarray) -> np.ndarray:
        """The step on a float32 batch."""
        return x * np.float32(self.scale) + np.float32(self.offset)

    def invert(self, x: np.ndarray) -> np.ndarray:
        """Raw values back from scaled ones."""
        return (x - np.float32(self.offset)) / np.float32(self.scale)

    def layer(self, keras: Any) -> Any:
        """The built-in Keras layer doing the same."""
        return keras.layers.Rescaling(self.scale, self.offset)

    def to_json(self) -> dict[str, Any]:
        """The step as JSON, with its formula."""
        return {"op": self.op, "formula": "x * scale + offset", "scale": self.scale, "offset": self.offset}


@dataclass(frozen=True, eq=False)
class Standardize:
    """`(x - mean) / std` with a mean and standard deviation per feature (or per pixel)."""

    mean: np.ndarray
    std: np.ndarray
    op: ClassVar[str] = "standardize"
    per_feature: ClassVar[bool] = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", np.asarray(self.mean, np.float32))
        object.__setattr__(self, "std", np.asarray(self.std, np.float32))

    def apply(self, x: np.ndarray) -> np.ndarray:
        """The step on a float32 batch."""
        return (x - self.mean) / self.std

    def invert(self, x: np.ndarray) -> np.ndarray:
        """Raw values back from standardised ones."""
        return x * self.std + self.mean

    def layer(self, keras: Any) -> Any:
        """Keras' Normalization layer over every axis of one example (one statistic per value)."""
        axes = tuple(range(1, 1 + self.mean.ndim))
        return keras.layers.Normalization(axis=axes, mean=self.mean, variance=np.square(self.std))

    def to_json(self) -> dict[str, Any]:
        """The step as JSON; mean and std have the shape of one example."""
        return {"op": self.op, "formula": "(x - mean) / std", "mean": self.mean.tolist(), "std": self.std.tolist()}


@dataclass(frozen=True)
class Clip:
    """Values limited to [0, high] (min-max scaling keeps unseen values inside the training range)."""

    high: float = 1.0
    op: ClassVar[str] = "clip"
    per_feature: ClassVar[bool] = False

    def apply(self, x: np.ndarray) -> np.ndarray:
        """The step on a float32 batch."""
        return np.clip(x, np.float32(0), np.float32(self.high))

    def invert(self, x: np.ndarray) -> np.ndarray:
        """Training inputs lie inside the range, so clipping had not changed them."""
        return x

    def layer(self, keras: Any) -> Any:
        """ReLU with a ceiling is exactly a clip to [0, high], with no custom code in the file."""
        return keras.layers.ReLU(max_value=self.high)

    def to_json(self) -> dict[str, Any]:
        """The step as JSON, with its formula."""
        return {"op": self.op, "formula": "min(max(x, 0), high)", "low": 0.0, "high": self.high}


Step = Rescale | Standardize | Clip
STEPS: dict[str, type] = {"rescale": Rescale, "standardize": Standardize, "clip": Clip}


@dataclass(frozen=True)
class Preprocessing:
    """The ordered steps from raw inputs to model inputs, and what a raw input is.

    `features` names a table's columns in input order and `label` its class column; images have a
    `color_mode` (rgb or grayscale) and, when the source resizes, the `resize` method used.
    `value_range` is the smallest and largest raw value of the training split.
    """

    steps: tuple[Step, ...] = ()
    features: tuple[str, ...] = ()
    label: str | None = None
    color_mode: str | None = None
    resize: str | None = None
    value_range: tuple[float, float] | None = None

    @property
    def per_feature(self) -> bool:
        """Whether a step has statistics per feature, which one integer input scale cannot carry."""
        return any(step.per_feature for step in self.steps)

    def apply(self, raw: np.ndarray) -> np.ndarray:
        """Model inputs (float32) from raw inputs, step by step."""
        x = np.asarray(raw, np.float32)
        for step in self.steps:
            x = step.apply(x)
        return x.astype(np.float32, copy=False)

    def invert(self, x: np.ndarray) -> np.ndarray:
        """Raw inputs (float32) back from model inputs, e.g. to calibrate a model that takes raw ones."""
        for step in reversed(self.steps):
            x = step.invert(x)
        return np.asarray(x, np.float32)

    def layers(self) -> list[Any]:
        """tf-keras layers doing the steps in order (built-in layers only, so files load anywhere)."""
        import tf_keras as keras

        return [step.layer(keras) for step in self.steps]

    def to_json(self, shape: tuple[int, ...]) -> dict[str, Any]:
        """The description a consumer of the exported model needs, for inputs of `shape` (no batch axis)."""
        kind = "image" if self.color_mode else "table" if len(shape) == 1 else "array"
        described: dict[str, Any] = {"kind": kind, "shape": list(shape), "dtype": "float32", "value_range": self.value_range}
        if kind == "table":
            described["features"] = list(self.features) or [f"feature {i}" for i in range(shape[0])]
            described["label_column"] = self.label
        if kind == "image":
            described.update(height=shape[0], width=shape[1], color_mode=self.color_mode, resize=self.resize)
        return {**described, "steps": [step.to_json() for step in self.steps]}

    @classmethod
    def from_json(cls, described: dict[str, Any]) -> Preprocessing:
        """The description back from `to_json`'s output."""
        steps = []
        for step in described.get("steps", []):
            values = {k: v for k, v in step.items() if k not in ("op", "formula", "low")}
            steps.append(STEPS[step["op"]](**values))
        return cls(
            tuple(steps), tuple(described.get("features") or ()), described.get("label_column"),
            described.get("color_mode"), described.get("resize"), described.get("value_range"),
        )

    def fingerprint_text(self) -> str:
        """Text that changes whenever the steps or their numbers do (for the data fingerprint)."""
        import json

        return json.dumps([step.to_json() for step in self.steps], sort_keys=True)


def fit_steps(train: np.ndarray, mode: str) -> list[Step]:
    """The steps of a `normalize` mode, with statistics from the training split only.

    unit: 8-bit integers / 255, floats already in [0, 1] kept, anything else min-max scaled and
    clipped; standard: zero mean, unit variance per feature; none: no step.
    """
    if mode == "standard":
        mean, std = moments(train)
        std[std == 0] = 1.0  # a constant feature carries no information; keep it at zero
        return [Standardize(mean, std)]
    if mode != "unit":
        return []
    low, high = value_range(train)
    if np.issubdtype(train.dtype, np.integer) and low >= 0 and high <= 255:
        return [Rescale(1 / 255)]
    if low >= 0 and high <= 1:
        return []
    span = high - low or 1.0
    return [Rescale(1 / span, -low / span), Clip(1.0)]


def moments(train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation per feature (float64) of an array, or of a streamed split read in
    batches (batch statistics merged as Chan et al. merge them: no split is held in memory)."""
    from pipeline.data.streaming import in_batches, is_streamed

    if not is_streamed(train):
        return train.mean(axis=0, dtype=np.float64), train.std(axis=0, dtype=np.float64)
    count, mean, squares = 0, np.zeros(train.shape[1:]), np.zeros(train.shape[1:])
    for batch in in_batches(train):
        values = batch.astype(np.float64)
        size, batch_mean = len(values), values.mean(axis=0)
        delta, total = batch_mean - mean, count + len(values)
        mean = mean + delta * size / total
        squares = squares + ((values - batch_mean) ** 2).sum(axis=0) + delta**2 * count * size / total
        count = total
    return mean, np.sqrt(squares / max(count, 1))


def value_range(train: np.ndarray) -> tuple[float, float]:
    """Smallest and largest value of an array, or of a streamed split read in batches."""
    from pipeline.data.streaming import in_batches, is_streamed

    if not is_streamed(train):
        return float(train.min()), float(train.max())
    ranges = [(float(batch.min()), float(batch.max())) for batch in in_batches(train) if len(batch)]
    return min(low for low, _ in ranges), max(high for _, high in ranges)
