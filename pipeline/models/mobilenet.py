"""MobileNetV2 from keras.applications, trained from scratch (no downloaded weights)."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field

from pipeline.errors import PipelineError
from pipeline.models.builtin import Architecture, ModelParams, require_images

MIN_SIDE = 32  # keras.applications refuses smaller inputs: five stride-2 stages


class MobileNetV2Params(ModelParams):
    """Parameters of MobileNetV2; `width` is its width multiplier (alpha)."""

    width: float = Field(1.0, gt=0, le=2, description="Width multiplier (alpha) on every layer's channels.")
    input_size: int | None = Field(
        None, ge=MIN_SIDE, le=1024, description="Side the images are resized to inside the model (null: the data's size)."
    )


class MobileNetV2(Architecture):
    """keras.applications.MobileNetV2 with `weights=None` and a logits head for the data's classes.

    With `input_size` set, the model starts with a Resizing layer, so it takes the data as it
    is and the exported model resizes on device as well.
    """

    Config: ClassVar = MobileNetV2Params

    def check(self, input_shape: tuple[int, ...], num_classes: int) -> None:
        """Images, at least 32x32 once resized."""
        require_images("mobilenet_v2", input_shape)
        if self.config.input_size is None and min(input_shape[:2]) < MIN_SIDE:
            raise PipelineError(
                f"model.input_size: the data's {input_shape[0]}x{input_shape[1]} images are below MobileNetV2's "
                f"{MIN_SIDE}x{MIN_SIDE} minimum; set model.input_size={MIN_SIDE} (or larger) to resize them"
            )

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> Any:
        """A flat functional model (TFMOT cannot prune nested models) that outputs logits."""
        import tf_keras as keras

        inputs = keras.Input(input_shape)
        features = inputs
        size = self.config.input_size
        if size is not None and tuple(input_shape[:2]) != (size, size):
            features = keras.layers.Resizing(size, size)(inputs)
        base = keras.applications.MobileNetV2(
            input_tensor=features, alpha=self.config.width, weights=None, include_top=False, pooling="avg"
        )
        # Built from the base's layers, not by calling the base: one flat graph of layers.
        head = keras.layers.Dropout(self.config.dropout)(base.output)
        logits = keras.layers.Dense(num_classes)(head)
        return keras.Model(inputs, logits, name="mobilenet_v2")
