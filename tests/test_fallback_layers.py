"""The integer gate knows each operator's Keras layer, the last one too, whichever layers the fallback keeps float.

The converter renames the operator that computes the model's output after the output
(`StatefulPartitionedCall:0`), so its tensor names do not say which layer it is; these tests
keep the first, a middle and the last layer float, as the fallback would, and check that
`require_integer=auto` accepts each choice and names the right layers.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest

from pipeline.data import Preprocessing
from pipeline.errors import PipelineError
from techniques import quant_debug as debug
from techniques.fallback import float_kept
from techniques.gates import GateParams, apply_gates, float_layers, integer_gate
from techniques.serving import serving_model

WHERE = "stages.quantize"


def mlp(keras, tail=()):
    """An MLP like the mlp model on a 30-feature table: flatten, dense, dense_1, dense_2 (logits), then `tail`."""
    layers = keras.layers
    return keras.Sequential(
        [
            keras.Input((30,)), layers.Flatten(name="flatten"), layers.Dense(16, activation="relu", name="dense"),
            layers.Dense(8, activation="relu", name="dense_1"), layers.Dense(2, name="dense_2"), *tail,
        ],
        name="mlp",
    )


def cnn(keras):
    """A small functional CNN: conv, conv_1, pooling, and a Dense classifier (head)."""
    layers = keras.layers
    inputs = keras.Input((8, 8, 1))
    x = layers.Conv2D(4, 3, activation="relu", name="conv")(inputs)
    x = layers.Conv2D(4, 3, activation="relu", name="conv_1")(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, layers.Dense(3, name="head")(x), name="cnn")


def served(build, outputs="logits"):
    """The model as the quantize stage converts it: behind the serving contract's named output."""
    import tf_keras as keras

    return serving_model(build(keras), Preprocessing(), "preprocessed", outputs)


def calibration(model):
    return np.random.default_rng(0).uniform(-1, 1, (32, *model.input_shape[1:])).astype(np.float32)


def kept_float(model, layers, tmp_path):
    """The int8 file of `model` with `layers` float, as the fallback makes it."""
    path = tmp_path / "kept.tflite"
    path.write_bytes(float_kept(model, calibration(model), layers))
    return path


CHOICES = [
    (mlp, "dense", "Dense", "FULLY_CONNECTED"),
    (mlp, "dense_1", "Dense", "FULLY_CONNECTED"),
    (mlp, "dense_2", "Dense", "FULLY_CONNECTED"),  # the last: its operator writes the model's output
    (cnn, "conv", "Conv2D", "CONV_2D"),
    (cnn, "conv_1", "Conv2D", "CONV_2D"),
    (cnn, "head", "Dense", "FULLY_CONNECTED"),  # the last
]


@pytest.mark.parametrize(("build", "layer", "kind", "op"), CHOICES, ids=[f"{c[0].__name__}-{c[1]}" for c in CHOICES])
def test_require_integer_auto_accepts_the_layer_the_fallback_kept_float(tmp_path, caplog, build, layer, kind, op):
    caplog.set_level(logging.INFO, logger="test")
    model = served(build)
    path = kept_float(model, [layer], tmp_path)
    assert float_layers(path, model) == {f"{layer} ({kind})": [op]}  # read from the file: that layer, no `other`
    integer_gate(path, WHERE, model, [layer])
    result = apply_gates(GateParams(), True, model, path, None, WHERE, [layer], logging.getLogger("test"))
    assert result.facts == {"fully_integer": False, "float_layers": [f"{layer} ({kind})"]}
    assert f"layers {layer} stay float by the accuracy budget's choice" in caplog.text


def test_the_gate_accepts_several_layers_kept_float_the_last_among_them(tmp_path):
    model = served(mlp)
    path = kept_float(model, ["dense_2", "dense"], tmp_path)  # the fallback's choice on the breast-cancer table
    assert float_layers(path, model) == {"dense (Dense)": ["FULLY_CONNECTED"], "dense_2 (Dense)": ["FULLY_CONNECTED"]}
    integer_gate(path, WHERE, model, ["dense_2", "dense"])


def test_the_last_layer_float_but_not_kept_is_named_not_other(tmp_path):
    model = served(mlp)
    path = kept_float(model, ["dense", "dense_2"], tmp_path)
    with pytest.raises(PipelineError, match=r"^stages.quantize.require_integer: layers the int8 kernels cannot run stay float: dense_2 \(Dense\): FULLY_CONNECTED;"):
        integer_gate(path, WHERE, model, ["dense"])


def test_an_output_layer_without_weights_is_known_as_the_output(tmp_path):
    import tensorflow as tf
    import tf_keras as keras

    # SIN has no int8 kernel: it stays float, and as the last layer its output carries no layer name.
    model = served(lambda keras: mlp(keras, [keras.layers.Lambda(tf.math.sin, name="wave")]))
    path = kept_float(model, [], tmp_path)
    assert float_layers(path, model) == {"wave (Lambda)": ["SIN"]}
    # The fallback matches operators to layers the same way, so it can rank (and keep float) such a layer.
    assert "wave" in debug.layer_nodes(path.read_bytes(), debug.keras_layer_names(model))
    with pytest.raises(PipelineError, match=r"cannot run stay float: wave \(Lambda\): SIN;"):
        integer_gate(path, WHERE, model, ["dense_2"])
    assert debug.output_layer(model) == "wave" and debug.output_layer(served(mlp, "probabilities")) == "probabilities"
    # The serving contract's linear `logits` converts to nothing: the layer before it computes the output.
    assert debug.output_layer(served(cnn)) == "head" and debug.output_layer(keras.Sequential()) is None


def test_a_genuinely_unsupported_float_layer_is_still_reported_beside_the_kept_ones(tmp_path):
    import tensorflow as tf

    def wavy(keras):
        layers = keras.layers
        return keras.Sequential(
            [keras.Input((30,)), layers.Dense(16, name="dense"), layers.Lambda(tf.math.sin, name="wave"), layers.Dense(2, name="dense_1")],
            name="wavy",
        )

    model = served(wavy)
    path = kept_float(model, ["dense_1"], tmp_path)
    assert float_layers(path, model) == {"wave (Lambda)": ["SIN"], "dense_1 (Dense)": ["FULLY_CONNECTED"]}
    with pytest.raises(PipelineError, match=r"cannot run stay float: wave \(Lambda\): SIN; set stages.quantize.require_integer=false"):
        integer_gate(path, WHERE, model, ["dense_1"])
