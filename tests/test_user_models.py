"""Models built the way users build them (tests/_user_models.py) through mobile_int8, qat_int8 and cluster_int8.

Each shape runs the three recipes on a small digits subset, sharing a stage cache (so the
recipes train it once), and is checked for what a user would look at: the sparsity of the
weights that could be pruned, an int8 file that loads and predicts, the layers left dense or
only calibrated named in the plan and the log, and one-line errors where a file cannot be integer.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from pipeline.errors import PipelineError
from pipeline.measure import litert
from pipeline.run.runner import RunInfo, run
from tests._runs import NO_SAFETY_NET, compose_config
from tests._user_models import SHAPES

SMALL = [
    "data.max_examples=600", "stages.train.epochs=2", "measure.latency_runs=2", "measure.warmup_runs=0",
    "stages.export.formats=[tflite,keras]", "model=custom",
]
RECIPES = {
    "mobile_int8": ["stages.prune.epochs=2"],
    "cluster_int8": ["stages.prune.epochs=2", "stages.cluster.epochs=1", "stages.qat.epochs=1", "stages.qat.accuracy_tolerance=null"],
    "qat_int8": ["stages.qat.epochs=1", "stages.qat.accuracy_tolerance=null"],
    "channel_int8": ["stages.channel_prune.epochs=1"],
}


@pytest.fixture(scope="module", autouse=True)
def _builders_may_be_imported():
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PIPELINE_ALLOWED_MODULES", "tests")
        yield


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    """One outputs folder (and stage cache) for every run of this module."""
    return tmp_path_factory.mktemp("user_models")


def run_recipe(outputs, shape: str, recipe: str, *extra: str):
    """The recipe on `shape`'s model, small; its result."""
    cfg = compose_config(outputs, f"recipe={recipe}", NO_SAFETY_NET, *SMALL, *RECIPES[recipe], f"model.target=tests._user_models:{shape}", *extra)
    return run(cfg, RunInfo(run_dir=outputs / f"{shape}_{recipe}_{len(extra)}", recipe=recipe))


def stage(result, name):
    """The artifact a stage made, from the final artifact's lineage."""
    return next(a for a in result.artifact.lineage() if a.stage == name)


def types(result, names):
    """The sorted distinct types of the named layers of the run's trained model."""
    model = stage(result, "train").load_keras()
    return sorted({type(model.get_layer(name)).__name__ for name in names})


def check_pruning(result, shape, log: str) -> float:
    """The prunable weights reached the target, the others are named; returns their share."""
    prune = stage(result, "prune")
    assert prune.metrics["pruned_layers_sparsity"] == pytest.approx(0.5, abs=0.02)
    assert types(result, prune.metadata["dense_layers"]) == sorted(shape.dense)
    # The table's sparsity counts every weight matrix, so a partial prune shows there.
    share = prune.metrics["dense_share"]
    assert (share > 0) == bool(shape.dense)
    assert result.rows[1].metrics["sparsity"] == pytest.approx(0.5 * (1 - share), abs=0.02)
    if shape.dense:
        assert f"(not prunable): {share:.1%} of the weights" in log
    assert "| prune " in (result.run_dir / "layer_plan.md").read_text()
    return share


def check_clustering(result, shape, share: float) -> None:
    """Unclustered layers are named; PCQAT kept the zeros of the pruned layers in the int8 file."""
    assert types(result, stage(result, "cluster").metadata["unclustered_layers"]) == sorted(shape.unclustered)
    assert stage(result, "qat").metadata["qat_scheme"] == "pcqat"
    assert result.rows[-1].metrics["sparsity"] == pytest.approx(0.5 * (1 - share), abs=0.03)


def check_int8(result, shape, name: str) -> None:
    """The stage's file is fully integer, what QAT only calibrated is named, and the export predicts."""
    made = stage(result, name)
    assert made.metadata["fully_integer"] is True
    if name == "qat":
        assert types(result, made.metadata["calibrated_layers"]) == sorted(shape.calibrated)
    tflite = next(p for p in result.exports if p.suffix == ".tflite")
    runner = litert.interpreter(tflite, threads=1)
    assert runner.get_input_details()[0]["dtype"] == np.int8 and runner.get_output_details()[0]["dtype"] == np.int8
    logits = litert.predict(tflite, np.random.default_rng(0).random((4, 8, 8, 1), np.float32))
    assert logits.shape == (4, 10) and np.isfinite(logits).all()


# The transfer shape (a MobileNetV2 base, 150 layers) takes minutes per recipe on 2 cores: the
# default run takes it through cluster_int8 (prune, cluster and QAT at once), the heavy run through all.
SMALL_SHAPES = [name for name, shape in SHAPES.items() if not shape.float_layers and name != "transfer"]


@pytest.mark.parametrize("name", [
    *(pytest.param(name, marks=pytest.mark.slow) for name in SMALL_SHAPES),
    pytest.param("transfer", marks=pytest.mark.heavy),
])
def test_every_recipe_acts_on_the_layers_inside(outputs, name, caplog):
    shape = SHAPES[name]
    with caplog.at_level("INFO", logger="pipeline"):
        pruned = run_recipe(outputs, name, "mobile_int8")
    share = check_pruning(pruned, shape, caplog.text)
    check_int8(pruned, shape, "quantize")
    aware = run_recipe(outputs, name, "qat_int8")
    assert aware.rows[0].cached  # the same training as mobile_int8
    check_int8(aware, shape, "qat")
    clustered = run_recipe(outputs, name, "cluster_int8")
    check_clustering(clustered, shape, share)
    check_int8(clustered, shape, "qat")


# Minutes of MobileNetV2 fine-tuning: heavy. The transfer shape's flattening is checked quickly in
# test_flatten, and pruning, clustering and QAT inside nested blocks by the recipes above.
@pytest.mark.heavy
def test_a_transfer_learning_model_goes_through_pruning_clustering_and_qat(outputs, caplog):
    shape = SHAPES["transfer"]
    with caplog.at_level("INFO", logger="pipeline"):
        result = run_recipe(outputs, "transfer", "cluster_int8")
    share = check_pruning(result, shape, caplog.text)
    check_clustering(result, shape, share)
    check_int8(result, shape, "qat")


@pytest.mark.slow
def test_a_layer_without_int8_kernels_is_named_and_can_ship_as_float(outputs):
    with pytest.raises(PipelineError, match=r"^stages.qat.require_integer: layers the int8 kernels cannot run stay float: "
                                            r"sine \(SineFeatures\): SIN; set stages.qat.require_integer=false"):
        run_recipe(outputs, "float_island", "qat_int8")
    shipped = run_recipe(outputs, "float_island", "qat_int8", "stages.qat.require_integer=false")
    assert stage(shipped, "qat").metadata["float_layers"] == ["sine (SineFeatures)"]
    assert "fully_integer" not in stage(shipped, "qat").metadata
    tflite = next(p for p in shipped.exports if p.suffix == ".tflite")
    assert litert.predict(tflite, np.zeros((2, 8, 8, 1), np.float32)).shape == (2, 10)


@pytest.mark.slow
def test_channel_pruning_narrows_the_layers_inside_the_blocks(outputs):
    result = run_recipe(outputs, "nested_blocks", "channel_int8")
    narrowed = stage(result, "channel_prune")
    model = narrowed.load_keras()
    assert sorted(narrowed.metadata["kept_channels"].values()) == [4, 8, 16]  # both convolutions of the block, the head's Dense
    plan = (result.run_dir / "layer_plan.md").read_text()
    assert "narrowed (8 -> 4 channels)" in plan and "whole (feeds the model's outputs)" in plan
    assert "model made by stages.channel_prune" in plan
    macs = [row.metrics["macs"] for row in result.rows]
    assert macs[1] < 0.5 * macs[0] and model.count_params() < 0.5 * stage(result, "train").load_keras().count_params()
    check_int8(result, SHAPES["nested_blocks"], "quantize")


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_a_subclassed_model_is_refused_before_training(tmp_path, recipe):
    with pytest.raises(PipelineError) as refused:
        run_recipe(tmp_path, "subclassed", recipe)
    message = str(refused.value)
    assert message.startswith("model.target: tests._user_models:subclassed: a subclassed model has no layer graph")
    assert "build it with keras.Model(inputs, outputs) or keras.Sequential" in message
    acting = {
        "mobile_int8": "stages.prune", "cluster_int8": "stages.prune, stages.cluster, stages.qat", "qat_int8": "stages.qat",
        "channel_int8": "stages.channel_prune",
    }
    assert f"and {acting[recipe]} work" in message and "\n" not in message
    assert not (tmp_path / f"subclassed_{recipe}_0" / "stages").exists()  # nothing trained
    assert not os.path.exists(tmp_path / "outputs" / "cache")
