"""Models shaped the way users build them, for `model=custom model.target=tests._user_models:NAME`.

Each builder takes `(input_shape, num_classes, **kwargs)` and returns an uncompiled tf_keras model
that outputs logits (except `softmax_head`), built as Keras' own guides build models: blocks as
nested `Sequential` or functional models, a `keras.applications` base called as a layer with a
new head, preprocessing layers inside the model, and layers no compression technique supports.
`SHAPES` lists every builder with what a user would expect of it; tests across the project reuse it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import tensorflow as tf  # noqa: E402 - TFMOT needs Keras 2, chosen before TensorFlow loads
import tf_keras as keras  # noqa: E402

layers = keras.layers


def nested_blocks(input_shape, num_classes, filters=8):
    """A functional model of Sequential blocks: augmentation, convolutional features, a head."""
    augment = keras.Sequential([layers.RandomFlip("horizontal"), layers.RandomTranslation(0.1, 0.1)], name="augment")
    features = keras.Sequential(
        [
            layers.Conv2D(filters, 3, padding="same", use_bias=False),
            layers.BatchNormalization(),
            layers.ReLU(),
            layers.Conv2D(2 * filters, 3, padding="same", activation="relu"),
            layers.MaxPooling2D(),
        ],
        name="features",
    )
    head = keras.Sequential([layers.Flatten(), layers.Dense(32, activation="relu"), layers.Dense(num_classes)], name="head")
    inputs = keras.Input(input_shape)
    return keras.Model(inputs, head(features(augment(inputs))), name="nested_blocks")


def transfer(input_shape, num_classes, alpha=0.35, size=32, frozen_statistics=True, augment=False, nested=True):
    """The transfer-learning shape: Resizing, a MobileNetV2 base called as a layer, a new head.

    As in Keras' transfer-learning guide the base is called with `training=False`, which keeps its
    BatchNormalization in inference mode (here with `weights=None`: no download in tests), and
    `augment` puts the guide's augmentation block (small shifts, turns and zooms) in front.
    `nested=False` builds the same layers as one flat graph (the base built on the tensor, as
    the built-in mobilenet_v2 is), to compare with what flattening makes of the nested one.
    """
    augmentation = [layers.RandomTranslation(0.1, 0.1), layers.RandomRotation(0.05), layers.RandomZoom(0.1)] if augment else []
    inputs = keras.Input(input_shape)
    x = layers.Resizing(size, size)(inputs)
    if nested:
        x = keras.Sequential(augmentation, name="augmentation")(x) if augment else x
        base = keras.applications.MobileNetV2(input_shape=(size, size, input_shape[-1]), alpha=alpha, weights=None, include_top=False)
        x = base(x, training=False) if frozen_statistics else base(x)
    else:
        for layer in augmentation:
            x = layer(x)
        x = keras.applications.MobileNetV2(input_tensor=x, alpha=alpha, weights=None, include_top=False).output
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(0.2)(x)
    return keras.Model(inputs, layers.Dense(num_classes)(x), name="transfer")


def branches(input_shape, num_classes, filters=8):
    """Two nested functional blocks with parallel branches joined by Add and Concatenate, their layers named alike."""

    def block(channels, name):
        entry = keras.Input((None, None, channels))
        # The same layer names in both blocks, as a block-building function gives them.
        left = layers.Conv2D(filters, 3, padding="same", activation="relu", name="left")(entry)
        right = layers.Conv2D(filters, 1, padding="same", activation="relu", name="right")(entry)
        joined = layers.Add(name="join")([left, right])
        skip = layers.Conv2D(filters, 1, name="skip")(entry)
        return keras.Model(entry, layers.Concatenate(name="stack")([joined, skip]), name=name)

    inputs = keras.Input(input_shape)
    x = block(input_shape[-1], "block_a")(inputs)
    x = block(2 * filters, "block_b")(x)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(num_classes)(x), name="branches")


def shared_layer(input_shape, num_classes, filters=8):
    """One block (a shared convolution) applied to the image and to a blurred copy of it, then summed."""
    shared = keras.Sequential([layers.Conv2D(filters, 3, padding="same", name="shared_conv"), layers.ReLU()], name="shared_block")
    inputs = keras.Input(input_shape)
    blurred = layers.AveragePooling2D(3, strides=1, padding="same")(inputs)
    x = layers.Add()([shared(inputs), shared(blurred)])
    x = layers.Flatten()(x)
    return keras.Model(inputs, layers.Dense(num_classes)(x), name="shared_layer")


def preprocessing(input_shape, num_classes, filters=8, size=16):
    """Rescaling, Resizing and Normalization inside the model, in a Sequential block of their own."""
    channels = input_shape[-1]
    prepare = keras.Sequential(
        [
            layers.Rescaling(2.0, offset=-1.0),
            layers.Resizing(size, size),
            layers.Normalization(mean=[0.0] * channels, variance=[0.5] * channels),
        ],
        name="prepare",
    )
    inputs = keras.Input(input_shape)
    x = layers.Conv2D(filters, 3, strides=2, padding="same", activation="relu")(prepare(inputs))
    x = layers.Flatten()(x)
    return keras.Model(inputs, layers.Dense(num_classes)(x), name="preprocessing")


def layer_norm(input_shape, num_classes, filters=8):
    """A flat functional model with a LayerNormalization, which TFMOT cannot quantize-annotate."""
    inputs = keras.Input(input_shape)
    x = layers.Conv2D(filters, 3, padding="same", activation="relu")(inputs)
    x = layers.Flatten()(x)
    x = layers.Dense(32)(x)
    x = layers.LayerNormalization(name="norm")(x)
    x = layers.ReLU()(x)
    return keras.Model(inputs, layers.Dense(num_classes)(x), name="layer_norm")


@keras.utils.register_keras_serializable(package="user_models")
class ChannelMix(layers.Layer):
    """A custom layer with weights: a learnt mixing matrix across channels, unknown to every technique."""

    def build(self, input_shape):
        channels = input_shape[-1]
        self.mix = self.add_weight(name="mix", shape=(channels, channels), initializer="glorot_uniform")

    def call(self, inputs):
        return tf.tensordot(inputs, self.mix, axes=1)


@keras.utils.register_keras_serializable(package="user_models")
class SineFeatures(layers.Layer):
    """A custom layer with weights whose operator (SIN) TFLite runs only in float."""

    def build(self, input_shape):
        self.frequency = self.add_weight(name="frequency", shape=(input_shape[-1],), initializer="ones")

    def call(self, inputs):
        return tf.sin(inputs * self.frequency)


def custom_layer(input_shape, num_classes, filters=16, units=32):
    """A functional model with a custom layer that holds about half of the weight matrices' values."""
    inputs = keras.Input(input_shape)
    x = layers.Conv2D(filters, 3, padding="same", activation="relu")(inputs)
    x = layers.Dense(units, activation="relu")(layers.GlobalAveragePooling2D()(x))
    x = ChannelMix(name="mix")(x)
    return keras.Model(inputs, layers.Dense(num_classes)(x), name="custom_layer")


def float_island(input_shape, num_classes, units=32):
    """A dense model with a sine layer in the middle: int8 everywhere except where TFLite has no int8 kernel."""
    inputs = keras.Input(input_shape)
    x = layers.Dense(units)(layers.Flatten()(inputs))
    x = SineFeatures(name="sine")(x)
    return keras.Model(inputs, layers.Dense(num_classes)(x), name="float_island")


def softmax_head(input_shape, num_classes, filters=8, softmax_layer=False):
    """A body and a nested head that ends in a softmax (activation or layer): probabilities, as many tutorials output."""
    body = keras.Sequential(
        [keras.Input(input_shape), layers.Conv2D(filters, 3, padding="same", activation="relu"), layers.Flatten()], name="body"
    )
    ending = [layers.Dense(num_classes), layers.Softmax()] if softmax_layer else [layers.Dense(num_classes, activation="softmax")]
    head = keras.Sequential([layers.Dense(32, activation="relu"), *ending], name="head")
    inputs = keras.Input(input_shape)
    return keras.Model(inputs, head(body(inputs)), name="softmax_head")


class _Subclassed(keras.Model):
    """A model written as a class with its own `call`: it has no layer graph."""

    def __init__(self, num_classes, filters):
        super().__init__(name="subclassed")
        self.conv = layers.Conv2D(filters, 3, padding="same", activation="relu")
        self.flat = layers.Flatten()
        self.out = layers.Dense(num_classes)

    def call(self, inputs):
        return self.out(self.flat(self.conv(inputs)))


def subclassed(input_shape, num_classes, filters=8):
    """A subclassed model, built so that its shapes are known."""
    model = _Subclassed(num_classes, filters)
    model.build((None, *input_shape))
    return model


@dataclass(frozen=True)
class Shape:
    """A builder of this module and what a user should find after running it through the recipes.

    Layers are named by type (names depend on what else Keras built in the process):
    `dense`: layers with a kernel that pruning and clustering cannot wrap (left dense, named);
    `unclustered`: layers with a kernel that clustering cannot wrap;
    `calibrated`: layers quantization-aware training cannot wrap (int8 from calibration instead);
    `float_layers`: layers TFLite runs only in float, named by the full-integer check;
    `channels_whole`: Conv and Dense layers (the output layer aside) whose channels channel pruning
    keeps, since a layer it cannot narrow needs them all;
    `nested`: whether the builder's model has models inside it (flattened before any stage).
    """

    builder: str
    nested: bool = False
    dense: tuple[str, ...] = ()
    unclustered: tuple[str, ...] = ()
    calibrated: tuple[str, ...] = ()
    float_layers: tuple[str, ...] = ()
    channels_whole: tuple[str, ...] = ()


SHAPES = {
    shape.builder: shape
    for shape in (
        Shape("nested_blocks", nested=True, calibrated=("RandomFlip", "RandomTranslation")),
        # TFMOT 0.8 prunes and clusters no DepthwiseConv2D (its registries list no weights of them).
        Shape("transfer", nested=True, dense=("DepthwiseConv2D",), unclustered=("DepthwiseConv2D",), calibrated=("Resizing",)),
        Shape("branches", nested=True),
        Shape("shared_layer", nested=True),
        Shape("preprocessing", nested=True, calibrated=("Normalization", "Rescaling", "Resizing")),
        Shape("layer_norm", calibrated=("LayerNormalization",), channels_whole=("Dense",)),
        Shape("custom_layer", dense=("ChannelMix",), unclustered=("ChannelMix",), calibrated=("ChannelMix",), channels_whole=("Dense",)),
        Shape("softmax_head", nested=True),
        Shape("float_island", calibrated=("SineFeatures",), float_layers=("SineFeatures",), channels_whole=("Dense",)),
    )
}
