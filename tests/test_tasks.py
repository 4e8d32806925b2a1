"""Regression and multi-label tasks: their metrics, data, budget, objectives and a run measured in their own terms."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.config.objectives import check, directions
from pipeline.config.recipe import check_recipe
from pipeline.config.settings import BudgetParams
from pipeline.data.arrays import CsvParams, CsvSource
from pipeline.errors import PipelineError
from pipeline.measure.tasks import TASKS, best_threshold
from pipeline.run.budget import Ledger, check_shipped
from pipeline.run.summary import StageRow, table
from tests._runs import TINY, compose_config, run_cli, table_rows


def regression_csv(path: Path, rows: int = 200, seed: int = 0) -> Path:
    """A table whose `price` (around 1000, in its own unit) is a smooth function of four features."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 4))
    price = 1000 + 50 * (3 * x[:, 0] - 2 * x[:, 1] + 0.5 * x[:, 2] ** 2) + rng.normal(scale=5, size=rows)
    lines = ["a,b,c,d,price", *(",".join([*(f"{v:.4f}" for v in r), f"{p:.2f}"]) for r, p in zip(x, price))]
    path.write_text("\n".join(lines) + "\n")
    return path


def multilabel_csv(path: Path, rows: int = 200, seed: int = 0) -> Path:
    """Three 0/1 genre columns, each set by the sign of one of four features."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 4))
    flags = (x[:, :3] > 0).astype(int)
    lines = ["f1,f2,f3,f4,action,comedy,drama"]
    lines += [",".join([*(f"{v:.4f}" for v in r), *map(str, f)]) for r, f in zip(x, flags)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_each_task_names_its_primary_metric_and_direction():
    regression, multilabel = TASKS["regression"], TASKS["multilabel"]
    assert (regression.primary, regression.higher_is_better, regression.val_primary) == ("mae", False, "val_mae")
    assert (multilabel.primary, multilabel.higher_is_better) == ("micro_f1", True)
    assert TASKS["classification"].test_key("accuracy") == "accuracy"  # the historic name stays
    assert regression.test_key("mae") == "test_mae"


def test_regression_metrics_and_a_relative_drop():
    found = TASKS["regression"].evaluate(np.array([[1.0], [2.0], [3.0]]), np.array([1.0, 2.5, 3.0]))
    assert found["mae"] == pytest.approx(1 / 6) and found["rmse"] == pytest.approx(np.sqrt(0.25 / 3))
    assert found["r2"] == pytest.approx(1 - 0.25 / (13 / 6))  # squared error over the spread around 6.5 / 3
    task = TASKS["regression"]
    assert task.drop(10.0, 10.5) == pytest.approx(0.05) and task.limit(10.0, 0.02) == pytest.approx(10.2)
    assert task.describe(0.05) == "5.0% (relative)"


def test_multilabel_f1_auc_and_the_threshold_chosen_on_validation():
    labels = np.array([[1, 0], [0, 1], [1, 0], [0, 0]])
    logits = np.array([[3.0, -2.0], [-1.0, 2.0], [0.4, -3.0], [-2.0, -1.0]])  # 0.4: probability 0.6
    found = TASKS["multilabel"].evaluate(logits, labels, threshold=0.7)
    assert found["micro_f1"] == pytest.approx(2 * 2 / (2 * 2 + 0 + 1))  # the third example's label is missed at 0.7
    assert found["roc_auc"] == pytest.approx(1.0)
    assert best_threshold(logits, labels) <= 0.6  # a threshold that finds it
    assert TASKS["multilabel"].evaluate(logits, labels, best_threshold(logits, labels))["micro_f1"] == 1.0


def test_distillation_learns_values_and_per_label_soft_targets():
    from techniques.distillation import distillation_loss, pack

    teacher, student = np.array([[0.5], [-1.0]], np.float32), np.array([[1.5], [-1.0]], np.float32)
    values = pack(np.array([0.0, 0.0]), teacher)
    to_teacher = distillation_loss("kl", 1.0, 4.0, task="regression")(values, student).numpy()
    assert to_teacher == pytest.approx([1.0, 0.0])  # squared error to the teacher's value, no temperature
    flags, logits = np.array([[1, 0, 1]]), np.array([[2.0, -1.0, 0.5]], np.float32)
    soft = distillation_loss("kl", 1.0, 2.0, task="multilabel", labels=3)
    assert float(soft(pack(flags, logits), logits)[0]) == pytest.approx(0.0, abs=1e-6)  # agrees with its teacher
    assert float(soft(pack(flags, logits), -logits)[0]) > 0.1
    hard = distillation_loss("kl", 0.0, 2.0, task="multilabel", labels=3)
    assert float(hard(pack(flags, logits), np.array([[9.0, -9.0, 9.0]], np.float32))[0]) < 0.01  # right on every label


def test_csv_regression_targets_are_standardised_on_the_training_split(tmp_path):
    path = regression_csv(tmp_path / "prices.csv")
    data = CsvSource(CsvParams(name="csv", path=str(path), label="price")).load(0, "regression")
    mean, std = data.target_scale
    assert data.task == "regression" and data.num_classes == 1 and data.input_shape == (4,)
    assert abs(float(np.mean(data.y_train))) < 1e-4 and float(np.std(data.y_train)) == pytest.approx(1.0, abs=1e-4)
    assert 900 < mean < 1100 and std > 10
    assert np.all(data.in_unit(data.y_test) > 500)  # back in the price's own unit


def test_a_price_column_under_classification_suggests_regression(tmp_path):
    path = regression_csv(tmp_path / "prices.csv")
    with pytest.raises(PipelineError, match=r"^data.label: column 'price' holds 200 distinct numbers .* set task=regression"):
        CsvSource(CsvParams(name="csv", path=str(path), label="price")).load(0)


def test_multilabel_columns_are_labels_not_features(tmp_path):
    path = multilabel_csv(tmp_path / "movies.csv")
    data = CsvSource(CsvParams(name="csv", path=str(path), label=["action", "comedy", "drama"])).load(0, "multilabel")
    assert data.task == "multilabel" and data.input_shape == (4,) and data.y_train.shape[1] == 3
    assert data.labels == ("action", "comedy", "drama") and set(np.unique(data.y_train)) == {0.0, 1.0}


@pytest.mark.parametrize("task", ["regression", "multilabel"])
def test_a_csv_read_in_chunks_gives_the_in_memory_split_and_targets(tmp_path, task):
    path = regression_csv(tmp_path / "t.csv") if task == "regression" else multilabel_csv(tmp_path / "t.csv")
    label = "price" if task == "regression" else ["action", "comedy", "drama"]
    memory, streamed = (CsvSource(CsvParams(name="csv", path=str(path), label=label, in_memory_mb=size)).load(0, task)
                        for size in (1024, 0))
    assert streamed.streams and not memory.streams and streamed.task == memory.task == task
    assert streamed.input_shape == memory.input_shape == (4,) and streamed.labels == memory.labels
    if task == "regression":
        np.testing.assert_allclose(streamed.target_scale, memory.target_scale, rtol=1e-6)
    for name in ("train", "val", "test"):  # the same rows per split; streamed ones come in file order
        (x_memory, y_memory), (_, y_streamed) = memory.split_named(name), streamed.split_named(name)
        rows = np.concatenate(list(streamed.batches(name)))
        pairs = lambda x, y: sorted(zip(map(tuple, np.round(x, 3)), map(tuple, np.reshape(y, (len(y), -1)))))  # noqa: E731
        assert pairs(rows, y_streamed) == pairs(x_memory, y_memory)


def test_npz_reads_regression_values_and_multilabel_rows(tmp_path):
    from pipeline.data.arrays import NpzParams, NpzSource

    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 3)).astype(np.float32)
    np.savez(tmp_path / "values.npz", x=x, y=100 + 10 * x[:, 0])
    np.savez(tmp_path / "flags.npz", x=x, y=(x[:, :2] > 0).astype(np.int64))
    values = NpzSource(NpzParams(name="npz", path=str(tmp_path / "values.npz"))).load(0, "regression")
    assert values.task == "regression" and values.target_scale[0] == pytest.approx(100, abs=3)
    assert np.allclose(values.in_unit(values.y_test), 100 + 10 * values.x_test_raw[:, 0], atol=1e-3)
    flags = NpzSource(NpzParams(name="npz", path=str(tmp_path / "flags.npz"))).load(0, "multilabel")
    assert flags.task == "multilabel" and flags.num_classes == 2 and flags.y_val.shape[1] == 2
    with pytest.raises(PipelineError, match=r"data.path: y: task=multilabel takes rows of 0/1 flags"):
        NpzSource(NpzParams(name="npz", path=str(tmp_path / "values.npz"))).load(0, "multilabel")


def test_several_label_columns_need_task_multilabel(tmp_path):
    path = multilabel_csv(tmp_path / "movies.csv")
    with pytest.raises(PipelineError, match=r"data.label: 3 label columns .* need task=multilabel"):
        CsvSource(CsvParams(name="csv", path=str(path), label=["action", "comedy", "drama"])).load(0)


def test_the_task_is_checked_with_the_recipe(tmp_path):
    with pytest.raises(PipelineError, match=r"task: .*'classification', 'regression' or 'multilabel'|task: Input should be"):
        check_recipe(compose_config(tmp_path, "task=ranking"))
    with pytest.raises(PipelineError, match=r"task: data=digits gives classification labels, not regression; use data=csv"):
        check_recipe(compose_config(tmp_path, "task=regression"))


def test_the_safety_net_speaks_of_a_relative_mae_increase():
    ledger = Ledger(0.5, label="safety net", task="regression")
    ledger.record("train", 10.0)
    ledger.record("prune", 12.0)
    ledger.record("quantize", 16.0)
    budget = ledger.budget()
    assert budget.floor == pytest.approx(15.0) and not budget.meets(16.0) and budget.meets(14.9)
    assert dict(budget.spent) == pytest.approx({"prune": 0.2, "quantize": 0.4})
    with pytest.raises(PipelineError) as error:
        check_shipped(ledger, BudgetParams())
    assert "validation mae 16.0000 is 60.0% (relative) above the first trained model's 10.0000" in str(error.value)
    assert "allows (50.0% (relative)); 'quantize' lost 40.0% (relative)" in str(error.value)
    assert "ceiling 15.0000" in ledger.table() and "| prune | 12.0000 | +0.2000 |" in ledger.table()


def test_search_objectives_follow_the_task():
    assert directions(["val_mae", "val_r2", "gzip_bytes"]) == ["minimize", "maximize", "minimize"]
    assert directions(["val_accuracy"], "regression") == ["minimize"]  # the default objective: the task's primary
    check(["val_mae", "gzip_bytes"], task="regression")
    with pytest.raises(PipelineError, match="'test_mae' is the test split's, which never steers a choice; use val_mae"):
        check(["test_mae"], task="regression")
    with pytest.raises(PipelineError, match="'val_mae' is not a measured metric"):
        check(["val_mae"])


def test_the_summary_table_shows_the_task_metrics():
    metrics = {"size_bytes": 1000, "gzip_bytes": 500, "params": 10, "sparsity": 0.5, "test_mae": 12.5, "test_rmse": 20.0,
               "test_r2": 0.9, "val_mae": 11.0, "latency_p50_ms": 1.0, "latency_p90_ms": 2.0}
    shown = table([StageRow("train", "keras", 1.0, metrics)], validation=True, task="regression")
    header = shown.splitlines()[0]
    assert "| MAE  | val MAE | RMSE | R²  |" in header.replace("  ", " ").replace(" |", " |") or (
        header.index("MAE") < header.index("val MAE") < header.index("RMSE") < header.index("R²")
    )
    assert "accuracy" not in header and "12.5" in shown and "11" in shown


def test_an_int8_regressor_gives_values_in_the_labels_unit(tmp_path):
    """Quick in-process check: a linear model on standardised targets, served and converted to int8,
    outputs prices (dequantized, the scaling undone in the model), and the runner's measurement reads them so."""
    import tf_keras as keras

    from pipeline.config.settings import MeasureParams
    from pipeline.measure.metrics import measure
    from pipeline.plugin.artifact import ModelArtifact, ModelFormat
    from techniques.conversion import convert
    from techniques.serving import serving_model

    path = regression_csv(tmp_path / "prices.csv")
    data = CsvSource(CsvParams(name="csv", path=str(path), label="price", normalize="none")).load(0, "regression")
    weights, *_ = np.linalg.lstsq(np.c_[data.x_train, np.ones(len(data.x_train))], data.y_train, rcond=None)
    model = keras.Sequential([keras.layers.Input((4,)), keras.layers.Dense(1)])
    model.set_weights([weights[:4, None].astype(np.float32), weights[4:].astype(np.float32)])
    served = serving_model(model, data.preprocessing, "preprocessed", "values", data.target_scale, "regression")
    tflite = tmp_path / "model.tflite"
    tflite.write_bytes(convert(served, "int8", data.x_train, sparse=False))
    artifact = ModelArtifact(tflite, ModelFormat.TFLITE, "quantize", metadata={"serving": {"outputs": "values"}})
    found = measure(artifact, data, MeasureParams(latency_runs=1, warmup_runs=0))
    float_mae = float(np.mean(np.abs(data.in_unit(model(data.x_test).numpy()[:, 0]) - data.in_unit(data.y_test))))
    assert "accuracy" not in found and found["test_mae"] == pytest.approx(float_mae, rel=0.1)  # int8 close to float
    assert found["test_mae"] < 40 and found["test_r2"] > 0.8  # prices spread by about 170: values in their own unit


@pytest.mark.slow
def test_regression_runs_mobile_int8_in_process(tmp_path):
    path = regression_csv(tmp_path / "prices.csv")
    cfg = compose_config(
        tmp_path, *TINY, "data=csv", f"data.path={path}", "data.label=price", "task=regression", "model=mlp",
        "stages.train.epochs=30",
    )
    from pipeline.measure import litert
    from pipeline.run.runner import RunInfo, run

    result = run(cfg, RunInfo(run_dir=tmp_path / "run", recipe="mobile_int8"))
    final = result.rows[-1].metrics
    assert "accuracy" not in final and final["test_r2"] > 0.5
    meta = json.loads((tmp_path / "run" / "export" / "model.json").read_text())
    assert meta["task"]["name"] == "regression" and 900 < meta["task"]["target_scale"]["mean"] < 1100
    tflite = next(p for p in result.exports if p.suffix == ".tflite")
    data = CsvSource(CsvParams(name="csv", path=str(path), label="price")).load(cfg.seed, "regression")
    prices = litert.predict(tflite, data.x_test)  # the int8 output dequantized: prices, not standardised values
    assert np.mean(np.abs(prices[:, 0] - data.in_unit(data.y_test))) == pytest.approx(final["test_mae"], rel=1e-4)


@pytest.mark.slow
def test_the_command_line_prints_mae_and_predict_prints_prices(tmp_path):
    path = regression_csv(tmp_path / "prices.csv", rows=300)
    done = run_cli(
        "recipe=mobile_int8", "data=csv", f"data.path={path}", "data.label=price", "task=regression", "model=mlp",
        *TINY, "stages.train.epochs=20", cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = table_rows(done.stdout)
    assert "accuracy" not in rows["export"] and float(rows["export"]["MAE"]) < 60 and float(rows["export"]["R²"]) > 0.5
    export = next((tmp_path / "outputs" / "runs").glob("*/export"))
    from pipeline.commands.predict import predict

    printed = predict(export, [path])
    assert "regression" in printed and "MAE: " in printed and "R²: " in printed


RECIPES_DIR = Path(__file__).resolve().parents[1] / "recipes" / "recipe"
# Recipes built on the transformer model read token ids: they run on text data only.
TEXT_ONLY = {p.stem for p in RECIPES_DIR.glob("*.yaml") if "override /model: transformer" in p.read_text()}


def tiny_recipe_overrides(recipe: str) -> list[str]:
    """One or two epochs per training stage, a tabular student, and gates and budgets a few epochs can meet:
    the runs test that every stage works in the task's terms, not how good the models get."""
    import yaml

    config = yaml.safe_load((RECIPES_DIR / f"{recipe}.yaml").read_text())
    overrides = ["measure.latency_runs=2", "measure.warmup_runs=0", "budget.safety_net=null"]
    for name, params in (config.get("stages") or {}).items():
        params = params or {}
        if "epochs" in params:
            overrides.append(f"stages.{name}.epochs={2 if name == 'train' else 1}")
        if "student" in params:
            overrides.append(f"stages.{name}.student={{name: mlp, width: 0.5}}")
        if "accuracy_tolerance" in params:
            overrides.append(f"stages.{name}.accuracy_tolerance=1.0")
    if (config.get("budget") or {}).get("accuracy_drop") is not None:
        overrides.append("budget.accuracy_drop=0.9")
    return overrides


def trained_table_model(path: Path, outputs: int) -> Path:
    """An (untrained) tf-keras MLP for a 4-feature table saved to `path`, for recipes that start from a file."""
    import tf_keras as keras

    model = keras.Sequential([keras.layers.Input((4,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(outputs)])
    model.save(path)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("task", ["regression", "multilabel"])
@pytest.mark.parametrize("recipe", sorted(p.stem for p in RECIPES_DIR.glob("*.yaml") if p.stem not in TEXT_ONLY))
def test_every_shipped_recipe_runs_on_a_tiny_table(tmp_path, recipe, task):
    from pipeline.run.runner import RunInfo, run

    if task == "regression":
        data = ["data=csv", f"data.path={regression_csv(tmp_path / 't.csv')}", "data.label=price"]
    else:
        data = ["data=csv", f"data.path={multilabel_csv(tmp_path / 't.csv')}", "data.label=[action,comedy,drama]"]
    model = ["model=mlp", "model.hidden=[16]"]
    if recipe == "ptq_int8":
        model = ["model=file", f"model.path={trained_table_model(tmp_path / 'start.keras', 1 if task == 'regression' else 3)}"]
    cfg = compose_config(tmp_path, f"recipe={recipe}", f"task={task}", *data, *model, *tiny_recipe_overrides(recipe))
    result = run(cfg, RunInfo(run_dir=tmp_path / "run", recipe=recipe))
    primary = "test_mae" if task == "regression" else "test_micro_f1"
    assert all(primary in row.metrics and "accuracy" not in row.metrics for row in result.rows)
    assert np.isfinite(result.rows[-1].metrics[primary]) and result.rows[-1].format == "tflite"
    meta = json.loads(next(p for p in result.exports if p.suffix == ".json").read_text())
    assert meta["task"]["name"] == task
