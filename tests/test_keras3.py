"""Keras 3 model files in (rebuilt in tf-keras, checked on the data) and out (the keras3 export format)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.data import Dataset
from pipeline.errors import PipelineError
from pipeline.models.keras3 import is_keras3
from pipeline.models.user import FileModel, FileModelParams
from pipeline.plugin.artifact import ModelArtifact, ModelFormat
from tests import _keras3_models as k3
from tests._runs import TINY, run_cli
from tests._tiny import context


def images(shape, classes=3, count=24) -> Dataset:
    """Random images in [0, 1] of `shape`, every class in every split."""
    rng = np.random.default_rng(0)
    x = rng.random((count, *shape), dtype=np.float32)
    y = np.arange(count) % classes
    return Dataset(x, y, x[:8], y[:8], x[:8], y[:8], classes)


def load(path, data, safe_mode=True):
    """The model stages get from `model=file model.path=PATH`, after the runner has handed it the data."""
    from pipeline.models import build

    plugin = FileModel(FileModelParams(name="file", path=str(path), safe_mode=safe_mode))
    plugin.on_data_loaded(data)
    return build(plugin, data)


def test_building_keras3_models_leaves_tf_keras_alone():
    """The tests build Keras 3 models in their own process: tf.keras must stay tf-keras, and train."""
    import tensorflow as tf
    import tf_keras

    k3.layer_zoo()
    assert tf.keras.layers.Dense is tf_keras.layers.Dense
    model = tf_keras.Sequential([tf_keras.Input((4,)), tf_keras.layers.Dense(2)])
    model.compile("adam", "mse")
    history = model.fit(np.ones((8, 4), np.float32), np.zeros((8, 2), np.float32), epochs=2, verbose=0)
    assert history.history["loss"][1] < history.history["loss"][0]


def test_keras3_files_are_told_apart_without_loading(tmp_path, keras3_digits):
    import tf_keras

    files = keras3_digits["files"]
    assert is_keras3(files["keras"]) and is_keras3(files["h5"])
    old = tf_keras.Sequential([tf_keras.Input((4,)), tf_keras.layers.Dense(2)])
    old.save(tmp_path / "old.keras")
    old.save(tmp_path / "old.h5")
    assert not is_keras3(tmp_path / "old.keras") and not is_keras3(tmp_path / "old.h5")


@pytest.mark.parametrize(
    ("builder", "shape", "kind"),
    [
        pytest.param(k3.layer_zoo, (12, 12, 1), "keras", id="functional-keras"),
        pytest.param(k3.layer_zoo, (12, 12, 1), "h5", id="functional-h5", marks=pytest.mark.slow),
        pytest.param(k3.transfer_model, (32, 32, 3), "keras", id="applications-base-as-layer", marks=pytest.mark.slow),
    ],
)
def test_keras3_files_rebuild_in_tf_keras_with_the_same_predictions(tmp_path, caplog, builder, shape, kind):
    import tf_keras

    model = builder(shape, 3)
    path = k3.save(model, tmp_path, kind)
    data = images(shape)
    with caplog.at_level("INFO", logger="pipeline"):
        rebuilt = load(path, data)
    assert isinstance(rebuilt, tf_keras.Model)
    np.testing.assert_allclose(rebuilt.predict(data.x_test, verbose=0), model.predict(data.x_test, verbose=0), atol=1e-5)
    assert "predictions on a batch of the data (8 examples) match" in caplog.text


@pytest.mark.slow
def test_a_sequential_keras3_file_loses_its_softmax_like_a_tf_keras_one(tmp_path):
    model = k3.sequential((8, 8, 1), 3)
    data = images((8, 8, 1))
    rebuilt = load(k3.save(model, tmp_path, "keras"), data)
    assert rebuilt.softmax_removed
    assert (rebuilt.predict(data.x_test, verbose=0).argmax(-1) == model.predict(data.x_test, verbose=0).argmax(-1)).all()


@pytest.mark.slow
def test_a_layer_tf_keras_lacks_is_named(tmp_path):
    import keras

    inputs = keras.Input((6,))
    model = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.RMSNormalization(name="rms")(inputs)))
    with pytest.raises(PipelineError) as error:
        load(k3.save(model, tmp_path, "keras"), images((6,)))
    message = str(error.value)
    assert "model.path: cannot rebuild the Keras 3 model" in message
    assert "layer 'rms' (RMSNormalization) has no counterpart in tf-keras" in message
    assert "\n" not in message


@pytest.mark.slow
def test_a_layer_that_computes_differently_is_named(tmp_path):
    """Keras 3's Resizing can pad to the aspect ratio; tf-keras's cannot, so the rebuild differs there."""
    import keras

    inputs = keras.Input((8, 12, 1))
    x = keras.layers.Resizing(8, 8, pad_to_aspect_ratio=True, name="resize")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Flatten()(x)))
    with pytest.raises(PipelineError, match=r"layer 'resize' \(Resizing\) computes differently after the rebuild"):
        load(k3.save(model, tmp_path, "keras"), images((8, 12, 1)))


@pytest.mark.slow
def test_keras3_files_that_run_code_need_the_opt_in(tmp_path):
    import keras

    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Lambda(lambda t: t * 2.0)(inputs)))
    path = k3.save(model, tmp_path, "keras")
    with pytest.raises(PipelineError, match="runs Python code .* set model.safe_mode=false"):
        load(path, images((4,)))


@pytest.mark.slow
def test_keras3_export_writes_a_file_keras3_loads(tmp_path):
    import keras

    from stages.export import ExportParams, ExportStage
    from stages.train import TrainParams, TrainStage

    ctx = context(tmp_path, "train", width=0.25)
    trained = TrainStage(TrainParams(epochs=1)).run(None, ctx)
    out = ExportStage(ExportParams(formats=["keras3"])).run(trained, context(tmp_path, "export", index=1, data=ctx.data))
    path = tmp_path / "export" / "model_keras3.keras"
    assert path in out.exports
    assert json.loads(__import__("zipfile").ZipFile(path).read("metadata.json"))["keras_version"].startswith("3.")
    restored = keras.saving.load_model(path)
    raw, x = ctx.data.raw().x_test[:16], ctx.data.x_test[:16]  # exports take raw inputs, preprocessing folded in
    np.testing.assert_allclose(restored.predict(raw, verbose=0), trained.load_keras().predict(x, verbose=0), atol=1e-5)


@pytest.mark.slow
def test_a_keras3_teacher_file_is_rebuilt_for_distillation(tmp_path, keras3_digits):
    from stages.distill import DistillParams, DistillStage

    ctx = context(tmp_path, "distill", data=keras3_digits["data"])
    params = DistillParams(teacher=str(keras3_digits["files"]["keras"]), epochs=1, student={"name": "small_cnn", "width": 0.25})
    out = DistillStage(params).run(None, ctx)
    assert out.format is ModelFormat.KERAS
    assert out.metrics["teacher_accuracy"] == pytest.approx(keras3_digits["accuracy"], abs=1e-9)


@pytest.mark.slow
def test_a_keras3_file_runs_mobile_int8_from_the_command_line(tmp_path, keras3_digits):
    done = run_cli(
        "recipe=mobile_int8", "model=file", f"model.path={keras3_digits['files']['keras']}", "seed=0",
        "stages.export.formats=[tflite,keras3]", f"outputs={tmp_path / 'outputs'}", *TINY, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    log = done.stdout + done.stderr
    assert "is a Keras 3 model; rebuilding it in tf-keras" in log
    assert "predictions on a batch of the data (64 examples) match" in log
    exported = list((tmp_path / "outputs" / "runs").glob("*/export/model_keras3.keras"))
    assert len(exported) == 1 and is_keras3(exported[0])
    metrics = json.loads(next((tmp_path / "outputs" / "runs").glob("*/metrics.json")).read_text())
    assert [row["stage"] for row in metrics] == ["train", "prune", "quantize", "export"]
    assert metrics[2]["metrics"]["accuracy"] > 0.8  # the trained Keras 3 weights came through


def test_artifacts_know_a_signature_is_not_keras(tmp_path, keras3_digits):
    artifact = ModelArtifact(keras3_digits["files"]["export"], ModelFormat.SAVED_MODEL, "model")
    with pytest.raises(ValueError, match="is a saved_model file, not a Keras model"):
        artifact.load_keras()
