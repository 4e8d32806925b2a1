"""channel_prune composes: magnitude pruning and int8 after it, distillation into it, QAT after it; MACs measured."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient

from pipeline.plugin.artifact import Effect
from pipeline.run.runner import RunInfo, run
from tests._runs import compose_config, run_cli

pytestmark = pytest.mark.slow

QUICK = ["measure.latency_runs=3", "measure.warmup_runs=1", "stages.train.epochs=4"]


def rows_by_stage(result):
    return {row.stage: row.metrics for row in result.rows}


def test_channel_prune_then_magnitude_prune_then_int8(tmp_path):
    cfg = compose_config(tmp_path, "recipe=channel_int8", *QUICK, "stages.channel_prune.epochs=2")
    cfg.stages = {"train": cfg.stages.train, "channel_prune": cfg.stages.channel_prune,
                  "prune": {"final_sparsity": 0.5, "epochs": 2}, **{k: cfg.stages[k] for k in ("quantize", "export")}}
    result = run(cfg, RunInfo(run_dir=tmp_path / "run", recipe="channel_int8"))
    m = rows_by_stage(result)
    assert m["channel_prune"]["macs"] < 0.3 * m["train"]["macs"]  # half the channels: about a quarter of the work
    assert m["channel_prune"]["params"] < 0.35 * m["train"]["params"]
    assert m["prune"]["macs"] == m["channel_prune"]["macs"] and m["prune"]["sparsity"] == pytest.approx(0.5, abs=0.02)
    assert m["quantize"]["macs"] == m["channel_prune"]["macs"]  # counted from the TFLite file's operators
    assert m["quantize"]["sparsity"] == pytest.approx(0.5, abs=0.03) and m["quantize"]["accuracy"] > 0.8
    summary = (result.run_dir / "summary.md").read_text()
    assert " MACs |" in summary.splitlines()[0] and "| channel_prune | keras  |" in summary
    metrics = MlflowClient(tracking_uri=cfg.tracking.uri).get_run(result.run_id).data.metrics
    assert metrics["channel_prune.macs"] == m["channel_prune"]["macs"]
    assert metrics["channel_prune.macs_before"] == m["train"]["macs"]
    assert 0.5 < metrics["channel_prune.val_accuracy"] <= 1


def test_distill_into_the_channel_pruned_model_then_qat(tmp_path):
    cfg = compose_config(tmp_path, *QUICK)
    cfg.stages = {"train": {"epochs": 4}, "channel_prune": {"share": 0.5, "epochs": 0},
                  "distill": {"student": "incoming", "epochs": 3}, "qat": {"epochs": 1}}
    result = run(cfg, RunInfo(run_dir=tmp_path / "run", recipe="custom"))
    m = rows_by_stage(result)
    assert m["distill"]["params"] == m["channel_prune"]["params"] < 0.35 * m["train"]["params"]
    assert m["distill"]["accuracy"] > m["channel_prune"]["accuracy"] - 0.01 and m["distill"]["accuracy"] > 0.85
    assert m["qat"]["macs"] == m["distill"]["macs"] and m["qat"]["accuracy"] > 0.8
    assert result.artifact.metadata["qat_scheme"] == "default" and Effect.CHANNEL_PRUNED in result.artifact.effects


def test_the_recipe_from_the_command_line_and_an_empty_layer_in_one_line(tmp_path):
    done = run_cli("recipe=channel_int8", "stages.train.epochs=3", "stages.channel_prune.epochs=1",
                   "measure.latency_runs=3", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| channel_prune | keras  |" in done.stdout and "conv2d_1: 32 -> 16 channels" in done.stdout + done.stderr
    failed = run_cli("recipe=channel_int8", "stages.train.epochs=1", "stages.channel_prune.shares={conv2d: 0.97}", cwd=tmp_path)
    assert failed.returncode == 2
    assert failed.stderr.strip().splitlines()[-1] == (
        "error: stages.channel_prune.shares.conv2d: removing 97% of conv2d's 16 channels leaves none; "
        "lower it or list the layer in stages.channel_prune.skip_layers"
    )
    assert "Traceback" not in failed.stderr
