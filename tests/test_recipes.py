"""Every shipped recipe validates; the technique recipes run end to end on tiny settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.config.recipe import check_recipe
from pipeline.errors import PipelineError
from pipeline.run.runner import RunInfo, run
from tests._runs import NO_SAFETY_NET, compose_config

RECIPES = sorted(p.stem for p in (Path(__file__).parents[1] / "recipes" / "recipe").glob("*.yaml"))


def test_the_technique_recipes_are_shipped():
    assert {"mobile_int8", "mobile_fp16", "qat_int8", "distill_prune_int8", "cluster_int8", "sparse24_int8"} <= set(RECIPES)


# Recipes that start from a trained model need one: `model=file`.
TRAINED_MODEL = {"ptq_int8"}


@pytest.mark.parametrize("recipe", RECIPES)
def test_shipped_recipe_validates(tmp_path, recipe, request):
    model = ["model=file", f"model.path={request.getfixturevalue('trained').path}"] if recipe in TRAINED_MODEL else []
    plan = check_recipe(compose_config(tmp_path, f"recipe={recipe}", *model))
    assert plan.settings.description and plan.stages[-1].type == "export"


def test_a_recipe_without_training_names_model_file(tmp_path):
    with pytest.raises(PipelineError, match=r"stages.quantize: .* gets no model yet; .* or start from a saved model \(model=file model.path=FILE\)"):
        check_recipe(compose_config(tmp_path, "recipe=ptq_int8"))


TINY_EPOCHS = {
    "cluster_int8": ["stages.train.epochs=3", "stages.prune.epochs=1", "stages.cluster.epochs=1", "stages.qat.epochs=1",
                     "stages.qat.accuracy_tolerance=0.2"],
    "distill_prune_int8": ["stages.train.epochs=4", "stages.distill.epochs=10", "stages.prune.epochs=2",
                           "stages.quantize.accuracy_tolerance=0.2"],
    "smallest_mnist": ["stages.train.epochs=4", "stages.distill.epochs=10", "stages.prune.epochs=3", "stages.cluster.epochs=1",
                       "stages.qat.epochs=1", "++model.dropout=0.5"],
    "smallest_mnist_int4": ["stages.train.epochs=4", "stages.distill.epochs=10", "stages.prune.epochs=3",
                            "stages.qat.epochs=1", "++model.dropout=0.5", "budget.accuracy_drop=0.3"],
}


@pytest.mark.slow
@pytest.mark.parametrize(
    "recipe", ["cluster_int8", "distill_prune_int8", "smallest_mnist", "smallest_mnist_int4"]
)
def test_technique_recipe_runs_and_exports_metadata(tmp_path, recipe):
    cfg = compose_config(tmp_path, f"recipe={recipe}", *TINY_EPOCHS[recipe], NO_SAFETY_NET, "measure.latency_runs=3", "measure.warmup_runs=1")
    result = run(cfg, RunInfo(run_dir=tmp_path / "run", recipe=recipe))
    final = result.rows[-1].metrics
    assert result.rows[-1].format == "tflite" and final["accuracy"] > 0.5
    meta = json.loads((tmp_path / "run" / "export" / "model.json").read_text())
    assert meta["io"]["inputs"][0]["dtype"] == "int8"
    stages = [step["stage"] for step in meta["lineage"]]
    if recipe == "smallest_mnist":  # every technique: the convolutions stay dense, every kernel is clustered
        assert stages == ["train", "distill", "prune", "cluster", "qat"]
        facts = meta["lineage"][-1]["facts"]
        assert facts["qat_scheme"] == "pcqat" and all(name.startswith("dense") for name in facts["pruned_layers"])
        assert len(facts["clustered_layers"]) == 4 and facts["sparsity_preserved"] is True
        assert result.rows[2].metrics["sparsity"] > 0.65  # 80% of the dense layers, which hold 87% of the weights on digits
    elif recipe == "smallest_mnist_int4":  # every kernel trained on the int4 grid, the zeros kept
        assert stages == ["train", "distill", "prune", "qat"]
        facts = meta["lineage"][-1]["facts"]
        assert facts["qat_scheme"] == "pqat" and result.rows[-1].metrics["sparsity"] > 0.55  # 70% of the dense layers, kept
        precisions = facts["layer_precisions"]
        assert set(precisions) >= {"conv2d", "conv2d_1", "dense", "dense_1"}
        assert all("int4 weights" in precisions[name] for name in ("conv2d", "conv2d_1", "dense", "dense_1")), precisions
    elif recipe == "cluster_int8":
        assert stages == ["train", "prune", "cluster", "qat"]
        assert meta["lineage"][-1]["facts"]["qat_scheme"] == "pcqat"
        assert final["sparsity"] >= 0.45
    else:
        assert stages == ["train", "distill", "prune", "quantize"]
        train, distill = result.rows[0].metrics, result.rows[1].metrics
        assert distill["params"] < train["params"] / 3
