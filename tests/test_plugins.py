"""Third-party stages are found through the `pipeline.stages` entry-point group, runner untouched."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
from mlflow import MlflowClient

from pipeline.errors import PipelineError
from pipeline.plugin import registry
from pipeline.run.runner import RunInfo, run
from tests._runs import TINY, compose_config, run_cli, table_rows

PLUGIN = '''
"""A third-party package's stages."""
from typing import ClassVar

import numpy as np
from pydantic import Field

from pipeline.plugin.artifact import Effect, ModelArtifact, ModelFormat
from pipeline.plugin.schema import Params
from pipeline.plugin.stage import Stage


class RoundParams(Params):
    decimals: int = Field(1, ge=0, description="Decimals kept in every weight.")


class RoundWeights(Stage):
    """Rounds every weight: small weights become exact zeros."""

    Config: ClassVar = RoundParams

    def effects_after(self, incoming):
        return incoming | {Effect.PRUNED}

    def run(self, model, ctx):
        keras_model = model.load_keras()
        keras_model.set_weights([np.round(w, self.config.decimals) for w in keras_model.get_weights()])
        path = ctx.workdir / "rounded.keras"
        keras_model.save(path)
        return ModelArtifact(path, ModelFormat.KERAS, ctx.name, model, effects=self.output_effects(model))


class Explode(Stage):
    """Fails, as a buggy plugin would."""

    def run(self, model, ctx):
        raise RuntimeError("plugin bug")
'''

ENTRY_POINTS = """
[pipeline.stages]
round_weights = acme_stages:RoundWeights
explode = acme_stages:Explode
"""


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    """An installed distribution `acme-stages` (module + dist-info) on sys.path."""
    site = tmp_path / "site"
    dist_info = site / "acme_stages-0.1.dist-info"
    dist_info.mkdir(parents=True)
    (site / "acme_stages.py").write_text(PLUGIN)
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-stages\nVersion: 0.1\n")
    (dist_info / "entry_points.txt").write_text(ENTRY_POINTS)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delitem(sys.modules, "acme_stages", raising=False)  # another test's `acme_stages` may be imported
    yield site
    sys.modules.pop("acme_stages", None)


def test_plugin_is_listed_with_the_builtins(plugin_dir):
    names = set(registry.available(registry.STAGES))
    assert {"train", "prune", "quantize", "export", "round_weights", "explode"} <= names


def test_a_plugin_that_declares_pruning_satisfies_sparsity_preserving_qat(tmp_path, plugin_dir):
    from pipeline.config.recipe import check_recipe

    cfg = compose_config(tmp_path)
    cfg.stages = {"train": {}, "round_weights": {}, "qat": {"scheme": "pqat"}}
    assert [p.name for p in check_recipe(cfg).stages] == ["train", "round_weights", "qat"]
    cfg.stages = {"train": {}, "qat": {"scheme": "pqat"}}
    with pytest.raises(PipelineError, match="the model reaching it is not pruned"):
        check_recipe(cfg)


@pytest.mark.slow
def test_plugin_stage_runs_from_a_user_recipe_on_the_command_line(tmp_path, plugin_dir):
    recipes = tmp_path / "my_recipes" / "recipe"
    recipes.mkdir(parents=True)
    (recipes / "rounded.yaml").write_text(textwrap.dedent("""\
        # @package _global_
        description: Train, round weights to one decimal, convert to int8.
        stages:
          train: {epochs: 3}
          round_weights: {decimals: 1}
          quantize: {mode: int8}
        """))
    root = Path(__file__).parents[1]
    done = run_cli(
        "--config-dir", str(recipes.parent), "recipe=rounded", "measure.latency_runs=3",
        cwd=tmp_path, env={"PYTHONPATH": f"{plugin_dir}:{root}"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = table_rows(done.stdout)
    assert set(rows) >= {"train", "round_weights", "quantize"}
    sparsity = lambda stage: float(rows[stage]["sparsity"].rstrip("%"))  # noqa: E731
    assert sparsity("round_weights") > sparsity("train") + 5  # rounding made real zeros

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/outputs/mlflow.db")
    (mlrun,) = client.search_runs(experiment_ids=["1"])
    assert mlrun.data.params["stages.round_weights.decimals"] == "1"
    assert mlrun.data.tags["recipe"] == "rounded"


@pytest.mark.slow
def test_a_failing_stage_marks_the_run_failed_and_keeps_earlier_outputs(tmp_path, plugin_dir):
    cfg = compose_config(tmp_path, *TINY)
    cfg.stages = {"train": {"epochs": 1}, "explode": {}}
    with pytest.raises(RuntimeError, match="plugin bug"):
        run(cfg, RunInfo(run_dir=tmp_path / "run"))
    assert (tmp_path / "run" / "stages" / "0_train" / "model.keras").exists()
    (mlrun,) = MlflowClient(tracking_uri=cfg.tracking.uri).search_runs(experiment_ids=["1"])
    assert mlrun.info.status == "FAILED"
    assert "train.accuracy" in mlrun.data.metrics
