"""A table of bad inputs, each as a user would type it: one clear line, non-zero exit, nothing lost.

Every case must end with exit status 2 and a single `error: ...` line on stderr that contains
the expected text (which names the key or file), print no traceback, write no cache entry and
leave no MLflow run RUNNING. Mistakes in the recipe itself are caught before Hydra makes a run
folder, so those cases also leave no outputs folder at all.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from tests._data_files import idx_folder, image_tree, write_csv
from tests._runs import run_cli

# Every case runs the command line in its own process, as a user would type it.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]

USER_RECIPES = {
    "quantize_first": "stages:\n  quantize: {mode: int8}\n",
    "prune_after_int8": "stages:\n  train: {}\n  quantize: {mode: int8}\n  prune: {}\n",
    "distill_without_teacher": "stages:\n  distill: {}\n",
    "typo_top_level": "stgaes:\n  train: {}\n",
    "stage_not_a_mapping": "stages:\n  train: 3\n",
    "no_stages": "description: nothing to do\nstages: {}\n",
    "malformed": "stages:\n  train: {epochs: 3\n",
    "stages_as_a_list": "stages: [train, quantize]\n",
    "measure_not_a_mapping": "measure: 5\nstages:\n  train: {}\n",
}
LIST_RECIPE = "- train\n- quantize\n"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Broken and mismatched inputs written once for the whole table."""
    import tf_keras as keras

    folder = tmp_path_factory.mktemp("inputs")
    recipes = folder / "recipes" / "recipe"
    recipes.mkdir(parents=True)
    for name, text in USER_RECIPES.items():
        (recipes / f"{name}.yaml").write_text("# @package _global_\n" + text)
    (recipes / "a_list.yaml").write_text(LIST_RECIPE)
    good_idx = idx_folder(folder / "idx")
    corrupt_idx = folder / "corrupt_idx"
    corrupt_idx.mkdir()
    for source in good_idx.iterdir():  # right names, wrong bytes
        (corrupt_idx / source.name).write_bytes(source.read_bytes()[:25])
    np.savez(folder / "good.npz", x=np.random.default_rng(0).random((60, 12, 12, 1)), y=np.arange(60) % 3)
    (folder / "truncated.npz").write_bytes((folder / "good.npz").read_bytes()[:300])
    (folder / "corrupt.keras").write_bytes(b"PK\x03\x04 not really a zip")
    (folder / "corrupt.h5").write_bytes(np.random.default_rng(1).bytes(3000))
    (folder / "binary.csv").write_bytes(b"\xc1\x00\xff" + np.random.default_rng(2).bytes(3000))
    write_csv(folder / "with_nan.csv")
    lines = (folder / "with_nan.csv").read_text().splitlines()
    lines[5] = "nan," + lines[5].split(",", 1)[1]
    (folder / "with_nan.csv").write_text("\n".join(lines) + "\n")
    x = np.random.default_rng(0).random((60, 12, 12, 1))
    x[7, 3, 3, 0] = np.inf
    np.savez(folder / "with_inf.npz", x=x, y=np.arange(60) % 3)
    broken_image = image_tree(folder / "photos") / "red" / "3.png"
    broken_image.write_bytes(broken_image.read_bytes()[:40])  # a truncated download
    small = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(10)])
    small.save(folder / "eight_by_eight.keras")
    wide = keras.Sequential([keras.Input((12, 12, 1)), keras.layers.Flatten(), keras.layers.Dense(10)])
    wide.save(folder / "ten_classes.keras")
    return folder


# (arguments, text the single error line must contain, whether it is caught before any run folder)
CASES = [
    (["recipe=nope"], "recipe=nope: no such recipe", True),
    (["data=imagenet"], "data=imagenet: no such data", True),
    (["model=resnet"], "model=resnet: no such model", True),
    (["stages.prune.final_sparsity=1.5"], "stages.prune.final_sparsity: expected less than 1 (got 1.5)", True),
    (["stages.prune.final_sparsity=-0.1"], "stages.prune.final_sparsity: expected greater than or equal to 0", True),
    (["stages.prune.final_sparsity=abc"], "stages.prune.final_sparsity: expected a valid number (got 'abc')", True),
    (["stages.prune.frequncy=3"], "stages.prune.frequncy: unknown key; did you mean 'frequency'?", True),
    (["stages.prun.epochs=2"], "stages.prun: unknown stage 'prun'; did you mean 'prune'?", True),
    (["stages.train.epochs=0"], "stages.train.epochs: expected greater than or equal to 1", True),
    (["stages.train.epochs=2.5"], "stages.train.epochs: expected a valid integer (got 2.5)", True),
    (["stages.train.learning_rate=-1"], "stages.train.learning_rate: expected greater than 0", True),
    (["stages.train.optimizer=lion"], "stages.train.optimizer: expected 'adam', 'sgd' or 'rmsprop'", True),
    (["stages.quantize.mode=int4"], "stages.quantize.mode: expected 'none', 'dynamic', 'float16', 'int8' or 'int16x8'", True),
    (["stages.export.formats=[onnx]"], "stages.export.formats.0: expected 'tflite', 'keras', 'h5', 'saved_model' or 'keras3'", True),
    (["seed=-1"], "seed: expected greater than or equal to 0", True),
    (["measure.threads=0"], "measure.threads: expected greater than or equal to 1", True),
    (["data.test_fraction=1.5"], "data.test_fraction: expected less than 1", True),
    (["model.width=0"], "model.width: expected greater than 0", True),
    (["recipe=cluster_int8", "stages.cluster.number_of_clusters=1"], "stages.cluster.number_of_clusters: expected greater than or equal to", True),
    (["recipe=distill_prune_int8", "stages.distill.temperature=0"], "stages.distill.temperature: expected greater than 0", True),
    (["recipe=distill_prune_int8", "stages.distill.alpha=1.5"], "stages.distill.alpha: expected less than or equal to 1", True),
    (["recipe=quantize_first"], "stages.quantize: needs a keras or saved_model model but gets no model yet", True),
    (["recipe=prune_after_int8"], "stages.prune: needs a keras model but gets a tflite model from stages.quantize", True),
    (["recipe=distill_without_teacher"], "stages.distill", True),
    (["recipe=typo_top_level"], "stgaes: unknown key; did you mean 'stages'?", True),
    (["recipe=mobile_int8", "qqq=1"], "qqq: unknown key (valid: budget, cache, data, description, device, hydra", True),
    (["seeds=3"], "seeds: unknown key; did you mean 'seed'?", True),
    (["-m", "seeds=1,2"], "seeds: unknown key; did you mean 'seed'?", True),
    (["recipe=stage_not_a_mapping"], "stages.train: expected a mapping of parameters, got 3", True),
    (["recipe=no_stages"], "stages: the recipe has no stages", True),
    (["data=idx", "data.path={files}/missing"], "data.path:", True),
    (["data=idx", "data.path={files}/corrupt_idx"], "corrupt_idx", False),
    (["data=npz", "data.path={files}/truncated.npz"], "truncated.npz", False),
    (["model=file", "model.path={files}/corrupt.keras"], "model.path: is not a .keras archive", True),
    (["data=npz", "data.path={files}/good.npz", "model=file", "model.path={files}/eight_by_eight.keras"],
     "takes inputs of shape (8, 8, 1) but the data gives (12, 12, 1)", False),
    (["data=npz", "data.path={files}/good.npz", "model=file", "model.path={files}/ten_classes.keras"], "10", False),
    (["recipe=malformed"], "malformed.yaml: not valid YAML: expected ',' or '}', but got '<stream end>' (line 4, column 1)", True),
    (["recipe=stages_as_a_list"], "stages_as_a_list.yaml: stages must map each stage name to its parameters, got a list", True),
    (["recipe=a_list"], "a_list.yaml: expected a mapping of keys to values, got a list", True),
    (["recipe=measure_not_a_mapping"], "measure: expected a valid dictionary", True),
    (["data=csv", "data.path={files}/binary.csv", "model=mlp"], "binary.csv is not a UTF-8 CSV text file", False),
    (["data=csv", "data.path={files}/with_nan.csv", "data.label=species", "model=mlp"],
     "data.path: column 'length' line 6 holds 'nan'", False),
    (["data=npz", "data.path={files}/with_inf.npz"], "array x in", False),
    (["data=image_folder", "data.path={files}/photos"], "cannot decode image", False),
    (["model=file", "model.path={files}/corrupt.h5"], "model.path: is not an HDF5 file", True),
    (["recipe=distill_prune_int8", "stages.distill.teacher={files}/corrupt.h5"],
     "stages.distill.teacher: {files}/corrupt.h5 is not an HDF5 file", True),
    (["model=custom", "model.target=os:system"], "model.target: os:system is outside the modules", True),
    (["tracking.uri=http://127.0.0.1:9"], "tracking.uri: no MLflow server answers at http://127.0.0.1:9", True),
    (["outputs=/proc/forbidden"], "outputs: cannot write to /proc/forbidden", True),
]


@pytest.mark.parametrize("args, expected, before_any_run", CASES, ids=[" ".join(c[0]) for c in CASES])
def test_bad_input(tmp_path, files, args, expected, before_any_run):
    args = [a.format(files=files) for a in args]
    done = run_cli("--config-dir", str(files / "recipes"), *args, cwd=tmp_path, timeout=300)
    lines = done.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert done.returncode == 2, done.stderr[-2000:]
    assert len(errors) == 1 and expected.replace("{files}", str(files)) in errors[0], done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    outputs = tmp_path / "outputs"
    assert not list(outputs.glob("cache/*/entry.json"))
    if before_any_run:
        assert not outputs.exists()
    database = outputs / "mlflow.db"
    if database.exists():
        with sqlite3.connect(database) as db:
            assert db.execute("select count(*) from runs where status = 'RUNNING'").fetchone() == (0,)


def test_debug_flag_shows_the_traceback(tmp_path, files):
    done = run_cli("--config-dir", str(files / "recipes"), "model=file", f"model.path={files}/corrupt.keras",
                   cwd=tmp_path, env={"PIPELINE_DEBUG": "1"})
    assert done.returncode != 0 and "Traceback" in done.stderr and "PipelineError" in done.stderr
