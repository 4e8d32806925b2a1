"""Built-in model architectures, registered in the `pipeline.models` entry-point group.

A model plugin has a `Config` schema and `build(input_shape, num_classes)` returning an
uncompiled tf-keras model whose last layer outputs logits.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field

from pipeline.schema import Params


class SmallCNNParams(Params):
    """Parameters of the small CNN."""

    name: str = Field(description="Registered model architecture.")
    width: float = Field(1.0, gt=0, le=8, description="Multiplier on every layer's filters and units.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout rate before the classifier.")


class SmallCNN:
    """Two 3x3 convolutions, 2x2 max-pooling and a dense head: small enough for microcontrollers."""

    Config: ClassVar[type[Params]] = SmallCNNParams

    def __init__(self, config: SmallCNNParams):
        self.config = config

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> Any:
        """An uncompiled tf-keras model that outputs logits."""
        import tf_keras as keras

        def scaled(units: int) -> int:
            return max(1, round(units * self.config.width))

        layers = keras.layers
        return keras.Sequential(
            [
                layers.Input(input_shape),
                layers.Conv2D(scaled(16), 3, padding="same", activation="relu"),
                layers.Conv2D(scaled(32), 3, padding="same", activation="relu"),
                layers.MaxPooling2D(),
                layers.Flatten(),
                layers.Dropout(self.config.dropout),
                layers.Dense(scaled(64), activation="relu"),
                layers.Dense(num_classes),
            ],
            name="small_cnn",
        )
