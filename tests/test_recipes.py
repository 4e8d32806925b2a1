"""Every shipped recipe validates; the technique recipes run end to end on tiny settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.recipe import build_plan
from pipeline.runner import RunInfo, run
from tests._runs import compose_config

RECIPES = sorted(p.stem for p in (Path(__file__).parents[1] / "recipes" / "recipe").glob("*.yaml"))


def test_the_technique_recipes_are_shipped():
    assert {"mobile_int8", "mobile_fp16", "qat_int8", "distill_prune_int8", "cluster_int8", "sparse24_int8"} <= set(RECIPES)


@pytest.mark.parametrize("recipe", RECIPES)
def test_shipped_recipe_validates(tmp_path, recipe):
    plan = build_plan(compose_config(tmp_path, f"recipe={recipe}"))
    assert plan.settings.description and plan.stages[-1].type == "export"


TINY_EPOCHS = {
    "cluster_int8": ["stages.train.epochs=3", "stages.prune.epochs=1", "stages.cluster.epochs=1", "stages.qat.epochs=1",
                     "stages.qat.accuracy_tolerance=0.2"],
    "distill_prune_int8": ["stages.train.epochs=4", "stages.distill.epochs=10", "stages.prune.epochs=2",
                           "stages.quantize.accuracy_tolerance=0.2"],
}


@pytest.mark.parametrize(
    "recipe", [pytest.param("cluster_int8", marks=pytest.mark.slow), "distill_prune_int8"]
)
def test_technique_recipe_runs_and_exports_metadata(tmp_path, recipe):
    cfg = compose_config(tmp_path, f"recipe={recipe}", *TINY_EPOCHS[recipe], "measure.latency_runs=3", "measure.warmup_runs=1")
    result = run(cfg, RunInfo(run_dir=tmp_path / "run", recipe=recipe))
    final = result.rows[-1].metrics
    assert result.rows[-1].format == "tflite" and final["accuracy"] > 0.5
    meta = json.loads((tmp_path / "run" / "export" / "model.json").read_text())
    assert meta["io"]["inputs"][0]["dtype"] == "int8"
    stages = [step["stage"] for step in meta["lineage"]]
    if recipe == "cluster_int8":
        assert stages == ["train", "prune", "cluster", "qat"]
        assert meta["lineage"][-1]["facts"]["qat_scheme"] == "pcqat"
        assert final["sparsity"] >= 0.45
    else:
        assert stages == ["train", "distill", "prune", "quantize"]
        train, distill = result.rows[0].metrics, result.rows[1].metrics
        assert distill["params"] < train["params"] / 3
