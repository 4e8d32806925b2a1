"""mobile_int8 end to end on a user's data and model: real MNIST IDX files, a CSV table, a saved model."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.config.recipe import check_recipe
from pipeline.data import DigitsSource, SplitParams
from pipeline.measure import litert
from pipeline.models import SmallCNN, SmallCNNParams, check_compatible
from pipeline.run.runner import RunInfo, run
from tests._data_files import MNIST10K, write_csv
from tests._runs import TINY, compose_config, run_cli, table_rows

needs_mnist = pytest.mark.skipif(not MNIST10K.exists(), reason=f"real MNIST IDX files not found at {MNIST10K}")


def rows_of(result) -> dict[str, dict[str, float]]:
    return {row.stage: row.metrics for row in result.rows}


def assert_int8_export(result) -> None:
    tflite = next(p for p in result.exports if p.suffix == ".tflite")
    assert litert.interpreter(tflite, threads=1).get_input_details()[0]["dtype"] == np.int8


@pytest.mark.slow
@needs_mnist
def test_mobile_int8_on_a_subset_of_real_mnist(tmp_path):
    cfg = compose_config(
        tmp_path, *TINY, "data=idx", f"data.path={MNIST10K}", "data.max_examples=2000", "stages.train.epochs=5"
    )
    plan = check_recipe(cfg)
    check_compatible(plan.model_builder, plan.data_source.load(cfg.seed))
    result = run(cfg, RunInfo(run_dir=tmp_path / "run", recipe="mobile_int8"))
    metrics = rows_of(result)
    assert metrics["train"]["params"] > 400_000  # 28x28 inputs: the dense head grows with the image
    assert metrics["train"]["accuracy"] > 0.85
    assert abs(metrics["prune"]["sparsity"] - 0.5) <= 0.02
    assert metrics["quantize"]["accuracy"] >= metrics["prune"]["accuracy"] - 0.03
    assert_int8_export(result)


@pytest.mark.heavy  # the whole recipe on 8,000 images; test_mobile_int8_on_a_subset_of_real_mnist is its quick twin
@needs_mnist
def test_readme_command_on_real_mnist(tmp_path):
    done = run_cli("recipe=mobile_int8", "data=idx", f"data.path={MNIST10K}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert float(table_rows(done.stdout)["export"]["accuracy"]) > 0.95  # int8 TFLite accuracy on 2,000 held-out MNIST digits


@pytest.mark.slow
def test_mobile_int8_with_an_mlp_on_a_csv_table(tmp_path):
    path = write_csv(tmp_path / "iris.csv", count=150)
    cfg = compose_config(tmp_path, *TINY, "data=csv", f"data.path={path}", "data.label=species", "model=mlp", "stages.train.epochs=20")
    result = run(cfg, RunInfo(run_dir=tmp_path / "run", recipe="mobile_int8"))
    metrics = rows_of(result)
    assert metrics["train"]["accuracy"] > 0.9  # the first feature separates the classes
    assert metrics["export"]["accuracy"] > 0.9
    assert_int8_export(result)


@pytest.mark.slow
def test_mobile_int8_fine_tunes_a_saved_model_file(tmp_path):
    data = DigitsSource(SplitParams(name="digits")).load(seed=42)
    saved = tmp_path / "mine.h5"
    SmallCNN(SmallCNNParams(name="small_cnn", width=0.5)).build(data.input_shape, data.num_classes).save(saved)
    cfg = compose_config(tmp_path, *TINY, "model=file", f"model.path={saved}", "stages.train.epochs=6")
    result = run(cfg, RunInfo(run_dir=tmp_path / "run", recipe="mobile_int8"))
    metrics = rows_of(result)
    assert metrics["train"]["params"] < 15_000  # the half-width file, not the default architecture
    assert metrics["train"]["accuracy"] > 0.8
    assert_int8_export(result)
