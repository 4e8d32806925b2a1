"""Inference-only SavedModels (model.export, tf.saved_model.save): quantize, export, measure, teach; never train."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from pipeline.config.recipe import check_recipe
from pipeline.config.settings import MeasureParams
from pipeline.errors import PipelineError
from pipeline.models.savedmodel import SignatureModel, is_inference_only
from pipeline.plugin.artifact import ModelArtifact, ModelFormat
from tests._runs import compose_config
from tests._tiny import context

SIGNATURE_KINDS = ["export", "tf_saved_model"]


def test_inference_only_savedmodels_are_told_apart_by_their_files(tmp_path, keras3_digits):
    import tf_keras

    assert all(is_inference_only(keras3_digits["files"][kind]) for kind in SIGNATURE_KINDS)
    model = tf_keras.Sequential([tf_keras.Input((4,)), tf_keras.layers.Dense(2)])
    model.save(tmp_path / "keras_saved_model", save_format="tf")
    assert not is_inference_only(tmp_path / "keras_saved_model")  # tf-keras's own SavedModel trains as before


@pytest.mark.parametrize("kind", SIGNATURE_KINDS)
def test_a_signature_is_measured_like_the_keras_model(keras3_digits, kind):
    from pipeline.measure.metrics import measure

    data = keras3_digits["data"]
    artifact = ModelArtifact(keras3_digits["files"][kind], ModelFormat.SAVED_MODEL, "model")
    metrics = measure(artifact, data, MeasureParams(latency_runs=3, warmup_runs=1))
    assert metrics["accuracy"] == pytest.approx(keras3_digits["accuracy"], abs=1e-9)
    np.testing.assert_allclose(SignatureModel(artifact.path).predict(data.x_test), keras3_digits["logits"], atol=1e-4)
    assert metrics["params"] > 5000 and metrics["latency_p50_ms"] > 0


@pytest.mark.parametrize(
    ("overrides", "stage"),
    [
        (["recipe=mobile_int8"], "train"),
        (["recipe=qat_int8", "~stages.train"], "qat"),
        (["recipe=mobile_int8", "~stages.train"], "prune"),
        (["recipe=cluster_int8", "~stages.train", "~stages.prune"], "cluster"),
    ],
)
def test_stages_that_train_refuse_it_before_any_work(tmp_path, keras3_digits, overrides, stage):
    path = keras3_digits["files"]["export"]
    with pytest.raises(PipelineError) as error:
        check_recipe(compose_config(tmp_path, *overrides, "model=file", f"model.path={path}"))
    message = str(error.value)
    assert message.startswith(f"stages.{stage}: needs a keras model, but the model (model.path: {path}) is an inference-only SavedModel")
    assert "start the recipe with a stage that takes it (distill, export, quantize; e.g. recipe=ptq_int8)" in message
    assert "\n" not in message
    assert not (tmp_path / "outputs").exists()


def test_an_inference_only_student_is_refused(tmp_path, keras3_digits):
    from omegaconf import OmegaConf

    config = OmegaConf.to_container(compose_config(tmp_path, "recipe=distill_prune_int8"))
    config["stages"]["distill"]["student"] = {"name": "file", "path": str(keras3_digits["files"]["tf_saved_model"])}
    with pytest.raises(PipelineError, match=r"stages.distill.student: .* is an inference-only SavedModel .* cannot be trained as the student"):
        check_recipe(config)


def test_checking_such_a_recipe_does_not_import_tensorflow(tmp_path, keras3_digits):
    path = keras3_digits["files"]["export"]
    code = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        from tests._runs import compose_config
        from pipeline.config.recipe import check_recipe
        plan = check_recipe(compose_config(Path({str(tmp_path)!r}), "recipe=ptq_int8", "model=file", "model.path={path}"))
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "tf_keras", "keras")))
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


def test_a_signature_teaches_a_student(tmp_path, keras3_digits):
    from stages.distill import DistillParams, DistillStage

    ctx = context(tmp_path, "distill", data=keras3_digits["data"])
    teacher = str(keras3_digits["files"]["export"])
    out = DistillStage(DistillParams(teacher=teacher, epochs=2, student={"name": "small_cnn", "width": 0.25})).run(None, ctx)
    assert out.format is ModelFormat.KERAS and out.metadata["teacher"] == teacher
    assert out.metrics["teacher_accuracy"] == pytest.approx(keras3_digits["accuracy"], abs=1e-9)


@pytest.mark.slow
@pytest.mark.parametrize("kind", SIGNATURE_KINDS)
def test_ptq_int8_quantizes_and_exports_a_savedmodel_with_its_accuracy(tmp_path, keras3_digits, kind):
    from pipeline.run.runner import RunInfo, run

    path = keras3_digits["files"][kind]
    cfg = compose_config(
        tmp_path, "recipe=ptq_int8", "model=file", f"model.path={path}", "seed=0",
        "stages.export.formats=[tflite,saved_model]", "measure.latency_runs=3", "measure.warmup_runs=1",
    )
    result = run(cfg, RunInfo(run_dir=tmp_path / "run", recipe="ptq_int8"))
    assert [(row.stage, row.format) for row in result.rows] == [("quantize", "tflite"), ("export", "tflite")]
    int8 = result.rows[0].metrics
    assert abs(int8["accuracy"] - keras3_digits["accuracy"]) <= 0.01  # int8 within one point of the float model
    assert result.artifact.metadata["quantization"] == "int8" and result.artifact.metadata["fully_integer"]
    exported = {p.name for p in result.exports}
    assert {"model.tflite", "model_saved_model", "model.json"} <= exported
    assert is_inference_only(tmp_path / "run" / "export" / "model_saved_model")
