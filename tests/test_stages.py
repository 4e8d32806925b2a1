"""Built-in stages on a tiny trained model: conversion modes, export formats, schedules, failures."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.config.settings import MeasureParams
from pipeline.data import DigitsSource, SplitParams
from pipeline.errors import PipelineError
from pipeline.measure.metrics import file_sizes, measure
from pipeline.plugin.artifact import ModelArtifact, ModelFormat
from stages.export import ExportParams, ExportStage
from stages.prune import PruneParams
from stages.quantize import QuantizeParams, QuantizeStage
from stages.train import TrainParams, TrainStage
from techniques.pruning import mask_schedule
from tests._tiny import context, digits

QUICK = MeasureParams(latency_runs=3, warmup_runs=1)


@pytest.mark.parametrize("mode", ["none", "dynamic", "float16", "int8", "int16x8"])
def test_every_quantize_mode_converts_and_keeps_accuracy(tmp_path, trained, mode):
    keras_model, data = trained, digits()
    baseline = measure(keras_model, data, QUICK)["accuracy"]
    tflite = QuantizeStage(QuantizeParams(mode=mode)).run(keras_model, context(tmp_path, "quantize", 1))
    assert tflite.format is ModelFormat.TFLITE and tflite.metadata["quantization"] == mode
    assert measure(tflite, data, QUICK)["accuracy"] >= baseline - 0.03


def test_int8_tflite_is_under_a_third_of_float(tmp_path, trained):
    keras_model = trained
    float_file = QuantizeStage(QuantizeParams(mode="none")).run(keras_model, context(tmp_path / "f", "q"))
    int8_file = QuantizeStage(QuantizeParams(mode="int8")).run(keras_model, context(tmp_path / "i", "q"))
    ratio = file_sizes(int8_file.path)[0] / file_sizes(float_file.path)[0]
    assert ratio <= 0.3, ratio


def test_export_writes_every_format_from_the_lineage(tmp_path, trained):
    import tf_keras as keras

    keras_model, data = trained, digits()
    tflite = QuantizeStage(QuantizeParams(mode="int8")).run(keras_model, context(tmp_path, "quantize", 1))
    ctx = context(tmp_path, "export", 2)
    out = ExportStage(ExportParams(formats=["tflite", "keras", "h5", "saved_model"])).run(tflite, ctx)
    names = sorted(path.name for path in out.exports)
    assert names == ["model.h5", "model.json", "model.keras", "model.labels.txt", "model.tflite", "model_saved_model"]
    assert out.format is ModelFormat.TFLITE and out.path == tmp_path / "export" / "model.tflite"
    # The Keras formats take raw inputs (the digits' division by 16 is a layer now) and give the same logits.
    reference = keras_model.load_keras().predict(data.x_test[:8], verbose=0)
    raw = data.x_test_raw[:8]
    assert raw.max() == 16.0
    for name in ("model.h5", "model.keras", "model_saved_model"):
        reloaded = keras.models.load_model(tmp_path / "export" / name, compile=False)
        np.testing.assert_allclose(reloaded.predict(raw, verbose=0), reference, atol=1e-5)


def test_export_without_a_source_format_names_the_fix(tmp_path):
    lone = ModelArtifact(tmp_path / "m.tflite", ModelFormat.TFLITE, "quantize")
    with pytest.raises(PipelineError, match=r"stages.export.formats: no keras model to export as 'h5'"):
        ExportStage(ExportParams(formats=["h5"])).run(lone, context(tmp_path, "export"))


@pytest.mark.parametrize("total_steps", [2, 3, 7, 40, 41, 99, 100, 1000, 12345])
@pytest.mark.parametrize("ramp_fraction", [0.05, 0.5, 0.7, 1.0])
def test_mask_schedule_always_reaches_the_target_inside_training(total_steps, ramp_fraction):
    params = PruneParams(ramp_fraction=ramp_fraction)
    end_step, frequency = mask_schedule(params.ramp_fraction, params.frequency, total_steps)
    assert 1 <= end_step <= total_steps - 1  # steps run 0 .. total_steps - 1
    assert end_step % frequency == 0  # TFMOT updates masks only on multiples of frequency


def test_diverged_training_stops_with_a_clear_error(tmp_path):
    data = DigitsSource(SplitParams(name="digits")).load(seed=0)
    poisoned = data.x_train.copy()
    poisoned[0] = np.float32(3e38)  # overflows to inf in the first layer
    broken = type(data)(poisoned, data.y_train, data.x_val, data.y_val, data.x_test, data.y_test, data.num_classes)
    with pytest.raises(PipelineError, match=r"stages.train: training diverged .*; lower stages.train.learning_rate"):
        TrainStage(TrainParams(epochs=2, batch_size=len(poisoned))).run(None, context(tmp_path, "train", data=broken))


def test_splits_are_deterministic_and_disjoint():
    source = DigitsSource(SplitParams(name="digits"))
    first, second, other = source.load(seed=3), source.load(seed=3), source.load(seed=4)
    assert first.fingerprint() == second.fingerprint() != other.fingerprint()
    assert len(first.x_train) + len(first.x_val) + len(first.x_test) == 1797
    assert first.x_train.dtype == np.float32 and 0 <= first.x_train.min() and first.x_train.max() <= 1
