"""keras.applications architectures by name, with their pretrained weights and a new logits head.

`model=backbone model.architecture=ResNet50 model.weights=imagenet` builds the architecture
without its top, flat (its layers called on the model's own input, so TFMOT sees every layer),
then a dropout and a Dense logits layer for the data's classes. Pretrained weights come from
keras.applications itself (downloaded once into the Keras cache) or from `weights_path`; they are
loaded into a standalone copy of the base and carried over layer by layer by name, so the flat
model gets exactly the weights keras.applications would give. A model with pretrained weights
starts with the architecture's own input preprocessing, so it takes the data's [0, 1] images.

`trainable_backbone: false` freezes the base for the first stage that trains the new model (the
usual first step of fine-tuning: only the head learns); that stage saves the model unfrozen, so
later stages (prune, cluster, qat) train the whole model.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import re
import sys
from functools import cache
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from pipeline.errors import PipelineError
from pipeline.models.builtin import Architecture, ModelParams, require_images
from pipeline.plugin.fields import OptionalFile

MIN_SIDE = 32  # keras.applications refuses smaller inputs: five stride-2 stages


@cache
def architectures() -> tuple[str, ...]:
    """The architecture names keras.applications offers, read from tf-keras's package without importing it."""
    spec = importlib.util.find_spec("tf_keras")
    folders = list(spec.submodule_search_locations or []) if spec else []
    names: set[str] = set()
    for folder in folders:
        listing = Path(folder) / "applications" / "__init__.py"
        if listing.is_file():
            names |= set(re.findall(r"import ([A-Z]\w+)$", listing.read_text(), flags=re.MULTILINE))
    return tuple(sorted(names))


def has_width(architecture: str) -> bool:
    """Whether the architecture takes a width multiplier (keras.applications' `alpha`)."""
    return architecture.startswith("MobileNet")


class BackboneParams(ModelParams):
    """Parameters of a keras.applications backbone with a new head."""

    architecture: str = Field(
        "MobileNetV2", description="keras.applications architecture: MobileNetV2, MobileNetV3Small, EfficientNetB0, ResNet50, ..."
    )
    width: float = Field(1.0, gt=0, le=2, description="Width multiplier (alpha) of the MobileNets; other architectures take 1.0.")
    input_size: int | None = Field(
        None, ge=MIN_SIDE, le=1024, description="Side the images are resized to inside the model (null: the data's size)."
    )
    weights: Literal["imagenet"] | None = Field(
        None, description="imagenet: keras.applications' pretrained weights (downloaded once into ~/.keras/models); null: random."
    )
    weights_path: OptionalFile | None = Field(
        None, description="A weights file for the base without its top (.h5, as keras.applications downloads them)."
    )
    trainable_backbone: bool = Field(
        True, description="false: the base stays frozen in the first training stage (only the head learns); later stages train all."
    )

    @field_validator("architecture")
    @classmethod
    def _known(cls, name: str) -> str:
        known = architectures()
        if known and name not in known:
            close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
            hint = f"did you mean {' or '.join(repr(c) for c in close)}?" if close else f"known: {', '.join(known[:8])}, ..."
            raise ValueError(f"no keras.applications architecture '{name}'; {hint}")
        return name

    @model_validator(mode="after")
    def _consistent(self) -> BackboneParams:
        if self.weights and self.weights_path:
            raise ValueError("set weights or weights_path, not both")
        if self.width != 1.0 and not has_width(self.architecture):
            raise ValueError(f"{self.architecture} has no width multiplier; leave width at 1.0")
        return self


class Backbone(Architecture[BackboneParams]):
    """A keras.applications base (flat), optionally pretrained and frozen, with a Dense logits head."""

    @property
    def pretrained(self) -> bool:
        """Whether the base starts from pretrained weights."""
        return bool(self.config.weights or self.config.weights_path)

    def check(self, input_shape: tuple[int, ...], num_classes: int, where: str = "model") -> None:
        """Images, at least 32x32 once resized, with three channels for pretrained weights."""
        name = self.config.name
        require_images(name, input_shape, where)
        if self.config.input_size is None and min(input_shape[:2]) < MIN_SIDE:
            raise PipelineError(
                f"{where}.input_size: the data's {input_shape[0]}x{input_shape[1]} images are below {self.config.architecture}'s "
                f"{MIN_SIDE}x{MIN_SIDE} minimum; set {where}.input_size={MIN_SIDE} (or larger) to resize them"
            )
        if self.pretrained and input_shape[-1] != 3:
            key = f"{where}.weights" if self.config.weights else f"{where}.weights_path"
            raise PipelineError(
                f"{key}: pretrained {self.config.architecture} weights take RGB images but the data has {input_shape[-1]} "
                "channel(s); use RGB data (data.color_mode=rgb for image_folder) or train from scratch (weights: null)"
            )

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> Any:
        """A flat functional model (TFMOT cannot prune nested models) that outputs logits."""
        import tf_keras as keras

        config = self.config
        inputs = keras.Input(input_shape)
        features = inputs
        size = config.input_size
        if size is not None and tuple(input_shape[:2]) != (size, size):
            features = keras.layers.Resizing(size, size)(features)
        side = tuple(features.shape[1:3])
        preprocessing = input_preprocessing(config.architecture) if self.pretrained else None
        if preprocessing is not None:
            features = keras.layers.Rescaling(preprocessing.scale, preprocessing.offset, name="preprocessing")(features)
        # Built from the base's layers, not by calling the base: one flat graph of layers.
        base = self.application(input_tensor=features)
        if self.pretrained:
            copy_weights(self.application(input_shape=(*side, input_shape[-1]), weights=config.weights or config.weights_path), base)
            if preprocessing is not None and preprocessing.order is not None:
                reorder_first_kernel(base, preprocessing.order)
        head = keras.layers.Dropout(config.dropout)(base.output)
        logits = keras.layers.Dense(num_classes)(head)
        model = keras.Model(inputs, logits, name=config.name)
        if not config.trainable_backbone:
            frozen = [layer for layer in base.layers if layer.weights]
            for layer in frozen:
                layer.trainable = False
            model.frozen_layers = [layer.name for layer in frozen]  # train unfreezes them before saving
        return model

    def application(self, **kwargs: Any) -> Any:
        """The keras.applications base without its top, random unless `weights` is given."""
        import tf_keras as keras

        config = self.config
        options = {"include_top": False, "pooling": "avg", "weights": None, **kwargs}
        if has_width(config.architecture):
            options["alpha"] = config.width
        try:
            return getattr(keras.applications, config.architecture)(**options)
        except ValueError as error:
            if options["weights"] is not None:
                raise PipelineError(weights_failure(config, error)) from None
            raise PipelineError(f"model.input_size: {config.architecture}: {' '.join(str(error).split())[:200]}") from None
        except Exception as error:  # noqa: BLE001 - a failed download raises a bare Exception
            if options["weights"] is None:
                raise
            raise PipelineError(weights_failure(config, error)) from None


def weights_failure(config: BackboneParams, error: BaseException) -> str:
    """One line on why the pretrained weights did not load, naming the cache and weights_path."""
    reason = " ".join(str(error).split())[:160]
    if config.weights_path:
        return (
            f"model.weights_path: {config.weights_path} does not fit {config.architecture} without its top ({reason}); "
            "give the architecture's no-top weights file"
        )
    cache = Path(os.path.expanduser("~")) / ".keras" / "models"
    return (
        f"model.weights: cannot download the ImageNet weights of {config.architecture} into {cache} ({reason}); "
        f"copy the file there from a machine with network access, or set model.weights_path=FILE"
    )


def copy_weights(source: Any, target: Any) -> None:
    """Copy every weighted layer of `source` into the layer of the same name in `target`."""
    for layer in source.layers:
        if layer.weights:
            target.get_layer(layer.name).set_weights(layer.get_weights())


class BackboneInputs:
    """The affine map from [0, 1] images to what an architecture's weights expect, per channel.

    `order` is set when the architecture also reorders the channels (RGB to BGR): the map's
    scale and offset are then given in the input's channel order, and the reordering is folded
    into the first convolution's kernel.
    """

    def __init__(self, scale: list[float], offset: list[float], order: list[int] | None):
        self.scale = scale[0] if len(set(scale)) == 1 else scale
        self.offset = offset[0] if len(set(offset)) == 1 else offset
        self.order = order


def input_preprocessing(architecture: str) -> BackboneInputs | None:
    """The architecture's `preprocess_input` (on 0-255 pixels) as a map from [0, 1] pixels.

    Measured by running it on black and on pure red, green and blue pixels, so every
    architecture's own convention (scaling to [-1, 1], ImageNet mean and deviation, BGR with the
    mean subtracted, or pixels left at 0-255 for models that rescale inside) is followed.
    """
    import tf_keras as keras

    module = sys.modules[getattr(keras.applications, architecture).__module__]
    probe = np.array([[[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255]]], dtype=np.float32)
    out = np.asarray(module.preprocess_input(probe.copy()), dtype=np.float64)[0]
    offset_out = out[0]
    matrix = (out[1:] - offset_out).T / 255.0  # matrix[c, j]: output channel c per input channel j
    order = [int(np.argmax(np.abs(row))) for row in matrix]
    if sorted(order) != [0, 1, 2] or np.count_nonzero(np.abs(matrix) > 1e-9) != 3:
        raise PipelineError(f"model.architecture: {architecture}'s input preprocessing is not a per-channel scaling; train it from scratch")
    scale_in, offset_in = [0.0] * 3, [0.0] * 3
    for c, j in enumerate(order):  # output channel c reads input channel j
        scale_in[j], offset_in[j] = float(matrix[c, j] * 255.0), float(offset_out[c])
    return BackboneInputs(scale_in, offset_in, order if order != [0, 1, 2] else None)


def reorder_first_kernel(base: Any, order: list[int]) -> None:
    """Make the first convolution read channels in the input's order instead of `order`."""
    first = next(layer for layer in base.layers if getattr(layer, "kernel", None) is not None and layer.kernel.shape[-2] == 3)
    kernel, *rest = first.get_weights()
    reordered = np.empty_like(kernel)
    for c, j in enumerate(order):
        reordered[..., j, :] = kernel[..., c, :]
    first.set_weights([reordered, *rest])


class MobileNetV2Params(BackboneParams):
    """Parameters of MobileNetV2; `width` is its width multiplier (alpha)."""

    architecture: Literal["MobileNetV2"] = Field("MobileNetV2", description="Always MobileNetV2 (model=backbone takes any).")


class MobileNetV2(Backbone):
    """keras.applications.MobileNetV2 with a logits head; random weights unless `weights` is set."""

    Config: ClassVar = MobileNetV2Params
