"""Built-in architectures sized by a `width` multiplier, so a narrower copy can be a distillation student.

Each plugin has a `Config` schema, `check(input_shape, num_classes, where)` (what it needs from the
data, checked before any training; `where` is the config key it was chosen under) and
`build(input_shape, num_classes)` returning an uncompiled tf-keras model whose last layer outputs logits.
"""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

from pydantic import Field

from pipeline.errors import PipelineError
from pipeline.plugin.schema import Params, Plugin


class ModelParams(Params):
    """Parameters every built-in architecture has."""

    name: str = Field(description="Registered model architecture.")
    width: float = Field(1.0, gt=0, le=8, description="Multiplier on every layer's filters and units.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout rate before the classifier.")


A = TypeVar("A", bound=ModelParams)


class Architecture(Plugin[A]):
    """Base of the built-ins: keeps the config and scales layer sizes by `width`."""

    def scaled(self, units: int) -> int:
        """`units` times the width multiplier, at least 1."""
        return max(1, round(units * self.config.width))

    def check(self, input_shape: tuple[int, ...], num_classes: int, where: str = "model") -> None:
        """Raise PipelineError when this architecture cannot take such data; any shape by default.

        `where` is the config key the architecture was chosen under (`model`, or a stage's model
        such as `stages.distill.student`), so that the message names the key to change.
        """


def choice(where: str, name: str) -> str:
    """How a user picks architecture `name` at `where`: `model=mlp` (a config group), else `where.name=mlp`."""
    return f"{where}={name}" if where == "model" else f"{where}.name={name}"


def require_images(name: str, input_shape: tuple[int, ...], where: str = "model") -> None:
    """Convolutional models need (height, width, channels) examples."""
    if len(input_shape) != 3:
        raise PipelineError(
            f"{choice(where, name)}: needs images shaped (height, width, channels) but the data gives examples "
            f"of shape {input_shape}; use {choice(where, 'mlp')} for tabular data"
        )


class SmallCNN(Architecture[ModelParams]):
    """Two 3x3 convolutions, 2x2 max-pooling and a dense head: small enough for microcontrollers."""

    def check(self, input_shape: tuple[int, ...], num_classes: int, where: str = "model") -> None:
        """Images of at least 2x2 pixels (one max-pooling step)."""
        require_images("small_cnn", input_shape, where)
        if min(input_shape[:2]) < 2:
            raise PipelineError(
                f"{choice(where, 'small_cnn')}: images of {input_shape[0]}x{input_shape[1]} pixels are too small to pool; "
                f"use {choice(where, 'mlp')}"
            )

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> Any:
        """An uncompiled tf-keras model that outputs logits."""
        import tf_keras as keras

        layers = keras.layers
        return keras.Sequential(
            [
                layers.Input(input_shape),
                layers.Conv2D(self.scaled(16), 3, padding="same", activation="relu"),
                layers.Conv2D(self.scaled(32), 3, padding="same", activation="relu"),
                layers.MaxPooling2D(),
                layers.Flatten(),
                layers.Dropout(self.config.dropout),
                layers.Dense(self.scaled(64), activation="relu"),
                layers.Dense(num_classes),
            ],
            name="small_cnn",
        )


# Kept under its old name: the small CNN has exactly the shared parameters.
SmallCNNParams = ModelParams

Units = Annotated[int, Field(ge=1, le=65_536)]


class MLPParams(ModelParams):
    """Parameters of the multi-layer perceptron."""

    hidden: list[Units] = Field([128, 64], min_length=1, max_length=16, description="Units of each hidden layer (before width).")


class MLP(Architecture[MLPParams]):
    """Dense layers with ReLU on flattened input: for tabular features, also takes images."""

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> Any:
        """An uncompiled tf-keras model that outputs logits."""
        import tf_keras as keras

        layers = keras.layers
        hidden = [layers.Dense(self.scaled(units), activation="relu") for units in self.config.hidden]
        return keras.Sequential(
            [
                layers.Input(input_shape),
                layers.Flatten(),
                *hidden,
                layers.Dropout(self.config.dropout),
                layers.Dense(num_classes),
            ],
            name="mlp",
        )
