"""mobile_int8 end to end with real TensorFlow, TFMOT, the TFLite converter, LiteRT and MLflow."""

from __future__ import annotations

import json

import numpy as np
import pytest
from mlflow import MlflowClient

from pipeline.config.recipe import configure
from pipeline.measure import litert
from pipeline.measure.metrics import validation_accuracy
from pipeline.plugin import registry
from pipeline.run.runner import RunInfo, run
from tests._runs import TINY, compose_config, run_cli


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("e2e")
    cfg = compose_config(tmp_path, *TINY, "stages.train.epochs=8", "stages.prune.epochs=3", "stages.quantize.accuracy_tolerance=0.5",
                         "tracking.register_as=digits-int8")
    result = run(cfg, RunInfo(run_dir=tmp_path / "run", recipe="mobile_int8"))
    return cfg, result


def test_every_stage_is_measured(finished):
    _, result = finished
    assert [row.stage for row in result.rows] == ["train", "prune", "quantize", "export"]
    assert [row.format for row in result.rows] == ["keras", "keras", "tflite", "tflite"]
    for row in result.rows:
        m = row.metrics
        assert m["size_bytes"] > m["gzip_bytes"] > 0
        assert 0 < m["latency_p50_ms"] <= m["latency_p90_ms"]
        assert m["params"] > 30_000
        assert 0 < m["val_accuracy"] <= 1  # measured on the validation split, for searches to steer by
    assert result.rows[0].metrics["accuracy"] > 0.85  # digits with a small CNN, 8 epochs


def test_pruned_model_reaches_target_sparsity_and_compresses(finished):
    _, result = finished
    train, prune, quantize, _ = (row.metrics for row in result.rows)
    assert abs(prune["sparsity"] - 0.5) <= 0.02
    assert prune["gzip_bytes"] < 0.7 * train["gzip_bytes"]
    assert abs(quantize["sparsity"] - 0.5) <= 0.02  # int8 weights keep the zeros
    assert quantize["accuracy"] >= prune["accuracy"] - 0.03


def test_exports_full_integer_tflite_and_keras(finished):
    _, result = finished
    exported = {p.suffix: p for p in result.exports}
    assert set(exported) == {".tflite", ".keras", ".json", ".txt"}  # .txt: the labels file
    assert all(p.parent == result.run_dir / "export" and p.stat().st_size > 0 for p in result.exports)
    interpreter = litert.interpreter(exported[".tflite"], threads=1)
    assert interpreter.get_input_details()[0]["dtype"] == np.int8
    assert interpreter.get_output_details()[0]["dtype"] == np.int8
    assert (result.run_dir / "summary.md").read_text().count("\n") == 6
    described = json.loads(exported[".json"].read_text())
    assert described["recipe"]["stages"]["prune"]["final_sparsity"] == 0.5
    assert described["metrics"] == result.rows[2].metrics  # the quantize output, measured once


def test_mlflow_run_holds_params_metrics_and_artifacts(finished):
    cfg, result = finished
    client = MlflowClient(tracking_uri=cfg.tracking.uri)
    mlrun = client.get_run(result.run_id)
    assert mlrun.info.status == "FINISHED"
    assert mlrun.data.params["stages.prune.final_sparsity"] == "0.5"
    assert mlrun.data.params["stages.prune.ramp_fraction"] == "0.7"  # schema default, logged too
    assert mlrun.data.tags["recipe"] == "mobile_int8"
    metrics = mlrun.data.metrics
    assert metrics["accuracy"] == pytest.approx(result.rows[-1].metrics["accuracy"])
    assert metrics["prune.sparsity"] == pytest.approx(result.rows[1].metrics["sparsity"])
    data = configure(registry.DATA, {"name": "digits"}, "data").load(seed=cfg.seed)
    assert metrics["quantize.gate_tflite_accuracy"] == pytest.approx(validation_accuracy(result.artifact, data))
    assert "export.gate_tflite_accuracy" not in metrics  # inherited facts are not logged again
    history = client.get_metric_history(result.run_id, "gzip_bytes")
    assert sorted(m.step for m in history) == [0, 1, 2, 3]
    assert metrics["prune.pruned_layers_sparsity"] == pytest.approx(0.5, abs=0.02)
    assert metrics["prune.dense_share"] == 0  # every weight matrix of the small CNN was prunable
    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"recipe.yaml", "summary.md", "model", "layer_plan.md", "layer_plan.json"} <= artifacts
    plan = json.loads((result.run_dir / "layer_plan.json").read_text())
    actions = {layer["name"]: layer["stages"] for layer in plan["models"][0]["layers"]}
    assert actions["dense"]["prune"]["action"] == "pruned" and actions["dense"]["quantize"]["action"] == "int8"
    models = {a.path for a in client.list_artifacts(result.run_id, "model")}
    assert models == {"model/model.tflite", "model/model.keras", "model/model.json", "model/model.labels.txt"}


def test_the_shipped_model_is_a_registered_version(finished):
    cfg, result = finished
    client = MlflowClient(tracking_uri=cfg.tracking.uri)
    (version,) = client.search_model_versions("name='digits-int8'")
    assert version.run_id == result.run_id and version.source == f"runs:/{result.run_id}/model"
    final = result.rows[-1].metrics
    assert float(version.tags["gzip_bytes"]) == final["gzip_bytes"]
    assert float(version.tags["val_accuracy"]) == pytest.approx(final["val_accuracy"], abs=1e-5)
    assert float(version.tags["latency_p50_ms"]) == pytest.approx(final["latency_p50_ms"], rel=1e-5)
    assert version.tags["recipe"] == "mobile_int8" and version.description.startswith("Small CNN")


@pytest.mark.slow
def test_readme_command_runs_the_default_recipe(tmp_path):
    done = run_cli("recipe=mobile_int8", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| export   | tflite |" in done.stdout
    assert done.stderr == ""  # TensorFlow's and LiteRT's own notes stay out of the terminal...
    run_log = next((tmp_path / "outputs" / "runs").glob("*_mobile_int8/*.log")).read_text()
    assert "fully_quantize:" in run_log  # ...and go to the run's log
    assert (tmp_path / "outputs" / "mlflow.db").exists()
    exports = list((tmp_path / "outputs" / "runs").glob("*_mobile_int8/export/model.tflite"))
    assert len(exports) == 1
