"""MACs per example: counted from Keras layers and from TFLite operators, the same number for the same model."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.measure.macs import keras_macs, tflite_macs
from pipeline.run.summary import human_count


def convert(model, path, int8=False):
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if int8:
        shape = model.input_shape[1:]
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([np.random.rand(1, *shape).astype(np.float32)] for _ in range(4))
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    path.write_bytes(converter.convert())
    return path


def test_small_cnn_by_hand_and_in_its_tflite_files(tmp_path):
    from pipeline.models.builtin import ModelParams, SmallCNN

    model = SmallCNN(ModelParams(name="small_cnn")).build((8, 8, 1), 10)
    by_hand = 8 * 8 * 16 * 3 * 3 * 1 + 8 * 8 * 32 * 3 * 3 * 16 + (4 * 4 * 32) * 64 + 64 * 10
    assert keras_macs(model) == by_hand
    assert tflite_macs(convert(model, tmp_path / "float.tflite")) == by_hand
    assert tflite_macs(convert(model, tmp_path / "int8.tflite", int8=True)) == by_hand


def test_depthwise_and_separable_layers_count_the_same_in_tflite(tmp_path):
    import tf_keras as keras

    layers = keras.layers
    inputs = keras.Input((6, 6, 4))
    separable = layers.SeparableConv2D(8, 3, strides=2, padding="same")(inputs)  # 3x3 outputs
    depthwise = layers.DepthwiseConv2D(3, depth_multiplier=2, padding="same")(separable)
    model = keras.Model(inputs, layers.Dense(3)(layers.Flatten()(depthwise)))
    assert keras_macs(model) == 3 * 3 * (3 * 3 * 4 + 4 * 8) + 3 * 3 * 3 * 3 * 8 * 2 + 3 * 3 * 16 * 3
    assert tflite_macs(convert(model, tmp_path / "separable.tflite")) == keras_macs(model)


@pytest.mark.parametrize("int8", [False, True])
def test_attention_counts_its_projections_and_products_the_same_in_tflite(tmp_path, int8):
    import tf_keras as keras

    layers = keras.layers
    inputs = keras.Input((16, 32))  # 16 positions of width 32
    attended = layers.MultiHeadAttention(num_heads=4, key_dim=8, value_dim=6)(inputs, inputs)
    model = keras.Model(inputs, layers.Dense(5)(layers.GlobalAveragePooling1D()(attended)))
    projections = 16 * (32 * 4 * 8) * 2 + 16 * (32 * 4 * 6) + 16 * (4 * 6 * 32)  # query, key; value; output
    products = 4 * 16 * 16 * 8 + 4 * 16 * 16 * 6  # per head: scores over key_dim, context over the positions
    assert keras_macs(model) == projections + products + 32 * 5
    assert tflite_macs(convert(model, tmp_path / "attention.tflite", int8=int8)) == keras_macs(model)


@pytest.mark.parametrize(("count", "shown"), [(640, "640"), (4127616, "4.13M"), (3.0e8, "300M"), (1.2e9, "1.2G")])
def test_counts_print_short(count, shown):
    assert human_count(count) == shown
