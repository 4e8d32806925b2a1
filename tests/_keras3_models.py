"""Models built with Keras 3 (`import keras`) the way its guides build them, saved in each format.

Keras 3 and tf-keras live side by side in one process (TF_USE_LEGACY_KERAS=1 keeps `tf.keras`
on tf-keras); the tests build these models in the test process and check that tf-keras still
trains afterwards (test_keras3.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def layer_zoo(input_shape=(12, 12, 1), classes=3):
    """A functional Keras 3 model with a Sequential block inside and the common built-in layers."""
    import keras

    layers = keras.layers
    rng = np.random.default_rng(0)
    inputs = keras.Input(input_shape)
    x = layers.Resizing(16, 16)(inputs)
    normalize = layers.Normalization()
    normalize.adapt(rng.random((8, 16, 16, input_shape[-1]), dtype=np.float32))
    x = layers.Rescaling(2.0, offset=-1.0)(normalize(x))
    block = keras.Sequential(
        [layers.Conv2D(8, 3, padding="same"), layers.BatchNormalization(), layers.ReLU(max_value=6.0)], name="block"
    )
    x = block(x)
    a = layers.DepthwiseConv2D(3, padding="same", activation="relu")(x)
    b = layers.SeparableConv2D(8, 3, padding="same")(x)
    x = layers.Add()([a, b])
    x = layers.Concatenate()([x, layers.Activation("swish")(x)])
    x = layers.MaxPooling2D()(x)
    x = layers.AveragePooling2D(2)(x)
    x = layers.LayerNormalization()(x)
    x = layers.Reshape((4, 4 * 16))(x)
    x = layers.Flatten()(x)
    x = layers.Dropout(0.2)(x)
    x = layers.Dense(16, activation="gelu")(x)
    outputs = layers.Dense(classes)(x)
    model = keras.Model(inputs, outputs, name="zoo")
    randomize_batch_norm(model)
    return model


def transfer_model(input_shape=(32, 32, 3), classes=3):
    """The transfer-learning guide's shape: a keras.applications base called as a layer, a new head."""
    import keras

    base = keras.applications.MobileNetV2(input_shape=input_shape, alpha=0.35, include_top=False, weights=None)
    inputs = keras.Input(input_shape)
    x = keras.layers.Rescaling(2.0, offset=-1.0)(inputs)
    x = base(x, training=False)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(classes)(x), name="transfer")
    randomize_batch_norm(model)
    return model


def sequential(input_shape=(8, 8, 1), classes=3):
    """A plain Keras 3 Sequential CNN that ends in a softmax."""
    import keras

    layers = keras.layers
    return keras.Sequential(
        [
            keras.Input(input_shape),
            layers.Conv2D(4, 3, activation="relu"),
            layers.GlobalAveragePooling2D(),
            layers.Dense(classes, activation="softmax"),
        ],
        name="seq",
    )


def randomize_batch_norm(model) -> None:
    """Non-trivial moving statistics, so a rebuild that dropped them would predict differently."""
    import keras

    rng = np.random.default_rng(1)
    for layer in all_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, variance = layer.get_weights()
            layer.set_weights([
                gamma + rng.normal(0, 0.1, gamma.shape), beta + rng.normal(0, 0.1, beta.shape),
                rng.normal(0, 0.1, mean.shape), variance + rng.random(variance.shape),
            ])


def all_layers(model) -> list:
    """Every layer, nested models included."""
    found = []
    for layer in model.layers:
        found += [layer, *all_layers(layer)] if hasattr(layer, "layers") else [layer]
    return found


def save(model, folder: Path, kind: str) -> Path:
    """Save a Keras 3 model as `kind`: keras, h5, export (model.export) or tf_saved_model."""
    import tensorflow as tf

    folder.mkdir(parents=True, exist_ok=True)
    if kind in ("keras", "h5"):
        path = folder / f"{model.name}.{kind}"
        model.save(path)
    elif kind == "export":
        path = folder / f"{model.name}_export"
        model.export(path, verbose=False)
    else:
        path = folder / f"{model.name}_tf_saved_model"
        tf.saved_model.save(model, str(path))
    return path


def digits_cnn(input_shape=(8, 8, 1), classes=10):
    """A small functional Keras 3 CNN with a Sequential block inside, as a Keras 3 script would write it."""
    import keras

    layers = keras.layers
    inputs = keras.Input(input_shape)
    block = keras.Sequential(
        [layers.Conv2D(16, 3, padding="same"), layers.BatchNormalization(), layers.ReLU()], name="features"
    )
    x = layers.MaxPooling2D()(block(inputs))
    x = layers.Conv2D(32, 3, padding="same", activation="relu")(x)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(0.1)(x)
    return keras.Model(inputs, layers.Dense(classes)(x), name="digits_cnn")


def train_keras3(model, data, epochs: int, seed: int = 0):
    """Fit a Keras 3 model on a Dataset's training split with Keras 3's own fit; returns it."""
    import keras

    keras.utils.set_random_seed(seed)
    model.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    model.fit(data.x_train, data.y_train, epochs=epochs, batch_size=32, verbose=0)
    return model
