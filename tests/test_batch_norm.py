"""BatchNormalization ships statistics of the data it trained on; a stage stuck at chance says so."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from pipeline.models.flatten import flatten
from stages.train import TrainParams, TrainStage
from tests._tiny import context, digits


def with_batch_norm(data, frozen: bool = False):
    """A convolution block with keras.applications' BatchNormalization momentum (0.999), as a nested block."""
    import tf_keras as keras

    layers = keras.layers
    block = keras.Sequential(
        [layers.Conv2D(8, 3, padding="same", use_bias=False), layers.BatchNormalization(momentum=0.999, name="bn"), layers.ReLU()],
        name="block",
    )
    inputs = keras.Input(data.input_shape)
    x = block(inputs, training=False) if frozen else block(inputs)
    x = layers.Dense(data.num_classes)(layers.Flatten()(x))
    return flatten(keras.Model(inputs, x), data.x_train[:8])


def train(tmp_path, data=None, frozen=False, epochs=2):
    data = data if data is not None else digits()
    ctx = context(tmp_path, "train", data=data, build=lambda d: with_batch_norm(d, frozen))
    return TrainStage(TrainParams(epochs=epochs)).run(None, ctx), data


def test_moving_statistics_are_those_of_the_trained_model_on_the_data(tmp_path, caplog):
    import tf_keras as keras

    with caplog.at_level("WARNING"):
        trained, data = train(tmp_path)
    assert "chance" not in caplog.text
    model = trained.load_keras()
    bn = model.get_layer("bn")
    assert bn.momentum == 0.999  # the model keeps its own settings
    inputs = keras.Model(model.inputs, bn.input).predict(data.x_train, verbose=0)
    # 2 epochs of 40 steps leave a momentum-0.999 average at 92% of its starting zero; here it is the data's.
    np.testing.assert_allclose(bn.moving_mean.numpy(), inputs.mean(axis=(0, 1, 2)), rtol=0.02, atol=1e-3)
    np.testing.assert_allclose(bn.moving_variance.numpy(), inputs.var(axis=(0, 1, 2)), rtol=0.1)


def test_a_block_called_with_training_false_keeps_its_statistics(tmp_path):
    trained, _ = train(tmp_path, frozen=True, epochs=1)
    bn = trained.load_keras().get_layer("bn")
    assert np.all(bn.moving_mean.numpy() == 0) and np.all(bn.moving_variance.numpy() == 1)


def test_validation_at_chance_while_training_improves_is_named(tmp_path, caplog):
    data = digits()
    unlike = dataclasses.replace(data, y_val=(data.y_val + 1) % data.num_classes)  # validation labels that never match
    with caplog.at_level("WARNING"):
        train(tmp_path, unlike)
    (line,) = [r.getMessage() for r in caplog.records if "chance" in r.getMessage()]
    assert "train: validation accuracy stays at chance" in line
    assert "likely causes: BatchNormalization statistics or Dropout" in line and "validation data unlike the training data" in line


@pytest.mark.heavy
def test_mobilenet_from_scratch_predicts_more_than_one_class(tmp_path):
    """The issue's case: MobileNetV2 (alpha 0.35, 32x32) on digits for 8 epochs stayed at 0.10 validation accuracy."""
    from pipeline.config.recipe import configure
    from pipeline.models import build
    from pipeline.plugin import registry
    from tests._tiny import accuracy

    builder = configure(registry.MODELS, {"name": "mobilenet_v2", "width": 0.35, "input_size": 32}, "model")
    data = digits()
    ctx = context(tmp_path, "train", data=data, build=lambda d: build(builder, d))
    trained = TrainStage(TrainParams(epochs=8)).run(None, ctx)
    assert accuracy(trained, data) > 0.8
