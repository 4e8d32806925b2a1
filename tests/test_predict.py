"""`python -m pipeline.predict` on real exports: for every built-in data source, the exported int8
model's predictions on the raw test inputs reproduce the test accuracy the run reported."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.config.recipe import check_recipe
from pipeline.measure import litert
from pipeline.run.runner import RunInfo, run
from tests._data_files import idx_folder
from tests._runs import compose_config

# train -> int8 -> export, small and quick; the ship gate is left off (tiny models, few epochs).
INT8 = [
    "recipe=mobile_fp16", "stages.quantize.mode=int8", "stages.quantize.accuracy_tolerance=null",
    "stages.train.epochs=4", "measure.latency_runs=3", "measure.warmup_runs=1",
]


def run_and_load(tmp_path: Path, *overrides: str):
    """Run the recipe; its result and the data it ran on (the same seed gives the same splits)."""
    cfg = compose_config(tmp_path, *INT8, *overrides)
    data = check_recipe(cfg).data_source.load(cfg.seed)
    return run(cfg, RunInfo(run_dir=tmp_path / "run", recipe="int8")), data


def predict_cli(*args: object) -> subprocess.CompletedProcess:
    """`python -m pipeline.predict ARGS`, as a user types it."""
    return subprocess.run(
        [sys.executable, "-m", "pipeline.predict", *map(str, args)], capture_output=True, text=True, timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )


def predicted_accuracy(*args: object) -> tuple[int, int]:
    """Correct and total counts printed by predict."""
    done = predict_cli(*args)
    assert done.returncode == 0, done.stderr[-2000:]
    correct, total = re.search(r"^accuracy: [\d.]+ \((\d+) of (\d+)\)$", done.stdout, re.M).groups()
    return int(correct), int(total)


def assert_reproduces(result, export: Path, inputs: Path, *args: str) -> None:
    """predict's count of correct test inputs is exactly the run's reported test accuracy."""
    correct, total = predicted_accuracy(export, inputs, *args)
    assert correct / total == result.rows[-1].metrics["accuracy"]


def export_json(result) -> dict:
    return json.loads(next(p for p in result.exports if p.suffix == ".json").read_text())


def assert_error(done: subprocess.CompletedProcess, *fragments: str) -> None:
    """One `error:` line naming the problem, exit status 2, no traceback."""
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert all(fragment in lines[0] for fragment in fragments), lines[0]


@pytest.mark.slow
def test_digits_every_export_format_serves_raw_inputs(tmp_path):
    result, data = run_and_load(tmp_path, "stages.export.formats=[tflite,keras,saved_model]")
    export = result.run_dir / "export"
    np.savez(tmp_path / "test.npz", x=data.x_test_raw, y=data.y_test)
    assert data.x_test_raw.max() == 16  # raw digits: 0-16, as scikit-learn ships them
    assert_reproduces(result, export, tmp_path / "test.npz")

    meta = export_json(result)
    assert meta["classes"] == list("0123456789") and (export / meta["labels_file"]).read_text().split() == meta["classes"]
    assert meta["input"]["steps"] == [{"op": "rescale", "formula": "x * scale + offset", "scale": 0.0625, "offset": 0.0}]
    tflite = meta["serving"]["tflite"]
    assert tflite["inputs"] == "raw" and tflite["input_tensor"]["dtype"] == "int8"
    assert tflite["input_tensor"]["scale"] == pytest.approx(16 / 255)  # calibrated on raw inputs
    signatures = litert.interpreter(export / "model.tflite", threads=1).get_signature_list()
    assert signatures == {"serving_default": {"inputs": ["features"], "outputs": ["logits"]}}

    # The float exports take the same raw inputs and match the float model measured after training.
    train_correct = round(result.rows[0].metrics["accuracy"] * len(data.y_test))
    for name in ("model.keras", "model_saved_model"):
        correct, _ = predicted_accuracy(export / name, tmp_path / "test.npz")
        assert abs(correct - train_correct) <= 1, name

    assert_error(predict_cli(export, tmp_path / "missing.npz"), "missing.npz", "no such file")
    np.savez(tmp_path / "flat.npz", x=data.x_test_raw.reshape(len(data.x_test_raw), -1))
    assert_error(predict_cli(export, tmp_path / "flat.npz"), "(64,)", "(8, 8, 1)")
    assert_error(predict_cli(export, "--format", "h5", tmp_path / "test.npz"), "--format h5", "tflite, keras, saved_model")
    assert_error(predict_cli(tmp_path, tmp_path / "test.npz"), "no export metadata")


@pytest.mark.slow
def test_idx_test_images_as_png_files(tmp_path):
    import tensorflow as tf

    folder = idx_folder(tmp_path / "idx", count=120)
    result, data = run_and_load(tmp_path, "data=idx", f"data.path={folder}")
    images = tmp_path / "images"
    for i, (pixels, label) in enumerate(zip(data.x_test_raw, data.y_test)):
        (images / data.labels[label]).mkdir(parents=True, exist_ok=True)
        (images / data.labels[label] / f"{i}.png").write_bytes(tf.io.encode_png(pixels.astype(np.uint8)).numpy())
    assert_reproduces(result, result.run_dir / "export" / "model.tflite", images)
    assert_error(predict_cli(result.run_dir / "export", tmp_path / "idx"), "no images")


@pytest.mark.slow
def test_csv_rows_of_a_public_table(tmp_path):
    from sklearn.datasets import load_breast_cancer

    table = load_breast_cancer()
    header = [*table.feature_names, "diagnosis"]
    rows = [[*map(repr, map(float, x)), table.target_names[y]] for x, y in zip(table.data, table.target)]
    path = tmp_path / "breast_cancer.csv"
    path.write_text("\n".join(",".join(row) for row in [header, *rows]) + "\n")
    result, data = run_and_load(tmp_path, "data=csv", f"data.path={path}", "data.label=diagnosis", "model=mlp")

    meta = export_json(result)
    # One int8 input scale cannot carry 30 features of different ranges: the steps stay outside, said so.
    assert meta["serving"]["tflite"]["inputs"] == "preprocessed" and meta["serving"]["keras"]["inputs"] == "preprocessed"
    assert meta["input"]["features"] == list(table.feature_names) and meta["input"]["label_column"] == "diagnosis"
    assert meta["classes"] == ["benign", "malignant"]
    test_rows = tmp_path / "test.csv"
    lines = [",".join(header)] + [
        ",".join([*(repr(float(v)) for v in x), data.labels[y]]) for x, y in zip(data.x_test_raw, data.y_test)
    ]
    test_rows.write_text("\n".join(lines) + "\n")
    assert_reproduces(result, result.run_dir / "export", test_rows)

    (tmp_path / "short.csv").write_text("mean radius,diagnosis\n1.0,benign\n")
    assert_error(predict_cli(result.run_dir / "export", tmp_path / "short.csv"), "short.csv", "mean texture")


@pytest.mark.slow
def test_image_folder_photos_resized_as_in_training(tmp_path):
    import tensorflow as tf

    from pipeline.data.images import decode

    rng = np.random.default_rng(1)
    photos = tmp_path / "photos"
    for k, name in enumerate(["blue", "green", "red"]):
        (photos / name).mkdir(parents=True)
        for i in range(24):
            pixels = rng.integers(0, 90, (14 + i % 5, 12 + i % 3, 3)).astype(np.uint8)
            pixels[..., 2 - k] += 150
            (photos / name / f"{i}.png").write_bytes(tf.io.encode_png(pixels).numpy())
    result, data = run_and_load(
        tmp_path, "data=image_folder", f"data.path={photos}", "data.image_size=[12,12]", "stages.quantize.outputs=probabilities"
    )
    # The test split's files: the photos whose decoded, resized pixels are a raw test input.
    chosen = tmp_path / "test_photos"
    for path in sorted(photos.rglob("*.png")):
        image = decode(path, "rgb", [12, 12])
        if any(np.array_equal(image, raw) for raw in data.x_test_raw):
            (chosen / path.parent.name).mkdir(parents=True, exist_ok=True)
            (chosen / path.parent.name / path.name).write_bytes(path.read_bytes())
    assert sum(1 for _ in chosen.rglob("*.png")) == len(data.y_test)
    assert_reproduces(result, result.run_dir / "export", chosen)
    signatures = litert.interpreter(result.run_dir / "export" / "model.tflite", threads=1).get_signature_list()
    assert signatures["serving_default"]["outputs"] == ["probabilities"]
    done = predict_cli(result.run_dir / "export", next(chosen.rglob("*.png")))
    score = float(done.stdout.splitlines()[-1].split("|")[3])
    assert done.returncode == 0 and 0 < score <= 1
