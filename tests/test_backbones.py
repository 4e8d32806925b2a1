"""keras.applications backbones by name: flat, with pretrained weights from a file, frozen for the first fit."""

from __future__ import annotations

import urllib.request

import numpy as np
import pytest

from pipeline.config.recipe import check_recipe
from pipeline.data import Dataset
from pipeline.errors import PipelineError
from pipeline.models import check_compatible
from pipeline.models.backbone import Backbone, BackboneParams, input_preprocessing
from tests._runs import compose_config
from tests._tiny import context


def rgb(count: int = 24, side: int = 32, classes: int = 3) -> Dataset:
    """Random RGB images in [0, 1], every class in every split."""
    rng = np.random.default_rng(0)
    x = rng.random((count, side, side, 3), dtype=np.float32)
    y = np.arange(count) % classes
    return Dataset(x, y, x[:classes], y[:classes], x[:classes], y[:classes], classes)


def backbone(**values) -> Backbone:
    """A backbone plugin from config values (as a recipe gives them)."""
    return Backbone(BackboneParams(name="backbone", **values))


def no_top_weights(tmp_path, architecture: str, **options) -> tuple[str, list[np.ndarray]]:
    """A weights file of the base without its top, as keras.applications writes them, and its weights."""
    import tf_keras as keras

    base = getattr(keras.applications, architecture)(input_shape=(32, 32, 3), include_top=False, weights=None, pooling="avg", **options)
    rng = np.random.default_rng(3)
    base.set_weights([rng.normal(0, 0.05, w.shape).astype(np.float32) for w in base.get_weights()])
    path = tmp_path / f"{architecture}_notop.h5"
    base.save_weights(path)
    return str(path), base


@pytest.mark.parametrize(
    ("architecture", "options"),
    [("MobileNetV2", {"width": 0.35}), ("MobileNetV3Small", {"width": 0.75}), ("EfficientNetB0", {}), ("ResNet50", {})],
)
def test_architectures_build_flat_with_a_logits_head(architecture, options):
    import tf_keras as keras

    data = rgb()
    plugin = backbone(architecture=architecture, **options)
    plugin.check(data.input_shape, data.num_classes)
    model = plugin.build(data.input_shape, data.num_classes)
    assert model.input_shape == (None, *data.input_shape)
    assert not any(isinstance(layer, keras.Model) for layer in model.layers)  # TFMOT wraps layers, not sub-models
    assert model.output_shape == (None, 3) and model.layers[-1].get_config()["activation"] == "linear"


def test_weights_path_loads_the_file_into_the_flat_model(tmp_path):
    path, reference = no_top_weights(tmp_path, "MobileNetV2", alpha=0.35)
    model = backbone(architecture="MobileNetV2", width=0.35, weights_path=path).build((32, 32, 3), 3)
    for layer in (layer for layer in reference.layers if layer.weights):
        for expected, got in zip(layer.get_weights(), model.get_layer(layer.name).get_weights()):
            np.testing.assert_array_equal(expected, got)
    # The pretrained base sees the [-1, 1] pixels MobileNetV2's weights were trained on.
    assert model.get_layer("preprocessing").get_config()["scale"] == 2.0


@pytest.mark.slow
def test_bgr_architectures_get_their_preprocessing_folded_in(tmp_path):
    """ResNet50 wants BGR pixels minus the ImageNet mean; the flat model takes RGB in [0, 1] and computes the same."""
    import tf_keras as keras
    from tf_keras.applications import resnet50

    path, reference = no_top_weights(tmp_path, "ResNet50")
    model = backbone(architecture="ResNet50", weights_path=path).build((32, 32, 3), 3)
    images = np.random.default_rng(0).random((2, 32, 32, 3), dtype=np.float32)
    features = keras.Model(model.input, model.layers[-3].output)  # the pooled features, before the head
    expected = reference.predict(resnet50.preprocess_input(images * 255.0), verbose=0)
    np.testing.assert_allclose(features.predict(images, verbose=0), expected, rtol=1e-4, atol=1e-4)
    order = input_preprocessing("ResNet50").order
    assert order == [2, 1, 0]


@pytest.mark.slow
def test_a_frozen_backbone_trains_only_its_head_then_is_handed_on_whole(tmp_path):
    from stages.train import TrainParams, TrainStage

    data = rgb(count=48)
    plugin = backbone(architecture="MobileNetV2", width=0.35, trainable_backbone=False)
    started: dict[str, list[np.ndarray]] = {}

    def build():
        model = plugin.build(data.input_shape, data.num_classes)
        assert model.frozen_layers and not model.get_layer("Conv1").trainable
        started.update({name: model.get_layer(name).get_weights() for name in ("Conv1", "bn_Conv1", model.layers[-1].name)})
        return model

    ctx = context(tmp_path, "train", data=data)
    ctx = type(ctx)(**{**ctx.__dict__, "build_model": build})
    trained = TrainStage(TrainParams(epochs=1, batch_size=16)).run(None, ctx).load_keras()
    for name in ("Conv1", "bn_Conv1"):  # the backbone, batch-norm statistics included, did not move
        for before, after in zip(started[name], trained.get_layer(name).get_weights()):
            np.testing.assert_array_equal(before, after)
    assert not np.array_equal(started[trained.layers[-1].name][0], trained.layers[-1].get_weights()[0])  # the head learnt
    assert all(layer.trainable for layer in trained.layers)  # later stages train the whole model


@pytest.mark.slow
def test_imagenet_offline_names_the_cache_and_weights_path(tmp_path, monkeypatch):
    # A proxy on a closed local port makes the download fail at once, as it does without a network.
    for variable in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(variable, "http://127.0.0.1:9")
    for variable in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setattr(urllib.request, "_opener", None)
    monkeypatch.setenv("HOME", str(tmp_path))  # an empty Keras cache
    with pytest.raises(PipelineError) as error:
        backbone(architecture="MobileNetV2", width=0.35, weights="imagenet").build((32, 32, 3), 3)
    message = str(error.value)
    assert message.startswith("model.weights: cannot download the ImageNet weights of MobileNetV2 into ")
    assert str(tmp_path / ".keras" / "models") in message and "model.weights_path=FILE" in message
    assert "\n" not in message


def test_backbone_config_mistakes_fail_at_validation(tmp_path):
    plan = check_recipe(compose_config(tmp_path, "model=backbone", "model.architecture=EfficientNetB0"))
    assert plan.model_builder.config.architecture == "EfficientNetB0"
    cases = {
        "model.architecture=ResNet5": "model.architecture: no keras.applications architecture 'ResNet5'; did you mean 'ResNet50'",
        "model.width=0.5": "ResNet50 has no width multiplier",
        "model.weights=imagenet1k": "model.weights: expected 'imagenet'",
        f"model.weights_path={tmp_path / 'missing.h5'}": "model.weights_path: no such file or folder",
    }
    for override, expected in cases.items():
        extra = ["model.architecture=ResNet50"] if "width" in override else []
        with pytest.raises(PipelineError) as error:
            check_recipe(compose_config(tmp_path, "model=backbone", *extra, override))
        assert expected in str(error.value) and "\n" not in str(error.value)


def test_pretrained_weights_need_rgb_images(tmp_path):
    path, _ = no_top_weights(tmp_path, "MobileNetV2", alpha=0.35)
    gray = Dataset(*(np.zeros((6, 32, 32, 1), np.float32), np.arange(6) % 3) * 3, 3)
    with pytest.raises(PipelineError, match=r"model.weights_path: pretrained MobileNetV2 weights take RGB images but the data has 1"):
        check_compatible(backbone(architecture="MobileNetV2", width=0.35, weights_path=path), gray)


def test_mobilenet_v2_is_the_backbone_fixed_to_that_architecture(tmp_path):
    plan = check_recipe(compose_config(tmp_path, "model=mobilenet_v2", "model.width=0.35"))
    assert isinstance(plan.model_builder, Backbone) and plan.model_builder.config.architecture == "MobileNetV2"
    with pytest.raises(PipelineError, match="model.architecture: expected 'MobileNetV2'"):
        check_recipe(compose_config(tmp_path, "model=mobilenet_v2", "model.architecture=ResNet50"))
