"""The layer plan: what each stage will do to each layer, before any training, and `python -m pipeline.inspect`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pipeline.commands.inspect import layer_plan
from pipeline.run.quiet import is_native_note
from tests._runs import compose_config


@pytest.fixture(autouse=True)
def _builders_may_be_imported(monkeypatch):
    monkeypatch.setenv("PIPELINE_ALLOWED_MODULES", "tests")


def actions(plan, section=0):
    """{layer: {stage: "action (why)"}} of one planned model."""
    return {
        layer["name"]: {stage: f"{a['action']} ({a['why']})" if a["why"] else a["action"] for stage, a in layer["stages"].items()}
        for layer in plan.to_json()["models"][section]["layers"]
    }


def test_every_stage_says_what_it_does_to_each_layer(tmp_path):
    cfg = compose_config(tmp_path, "recipe=cluster_int8", "model=custom", "model.target=tests._user_models:custom_layer")
    plan = layer_plan(cfg)
    found = actions(plan)
    assert found["conv2d"] == {"prune": "pruned", "cluster": "clustered", "qat": "quantization-aware"}
    assert found["mix"] == {
        "prune": "dense (not prunable)", "cluster": "unclustered (not clusterable)",
        "qat": "calibrated (no TFMOT support for ChannelMix)",
    }
    assert found["global_average_pooling2d"] == {"qat": "quantization-aware"}  # no weights: nothing to prune
    table = plan.table()
    assert "| layer " in table and "| prune " in table and "| cluster " in table and "| qat " in table
    assert "- prune: prunes to 50% sparsity; left dense: mix (not prunable): " in table
    assert "- qat: scheme pcqat, then full-integer int8; calibrated only: mix" in table
    assert json.loads(plan.dumps()) == plan.to_json()


def test_later_stages_plan_on_a_distilled_student(tmp_path):
    plan = layer_plan(compose_config(tmp_path, "recipe=distill_prune_int8")).to_json()["models"]
    assert [model["title"] for model in plan] == ["model (model=small_cnn)", "model made by stages.distill"]
    assert "prune" not in {stage for layer in plan[0]["layers"] for stage in layer["stages"]}
    dense = [layer for layer in plan[1]["layers"] if layer["type"] == "Dense"]
    assert dense and all(layer["stages"]["prune"]["action"] == "pruned" for layer in dense)
    assert sum(layer["params"] for layer in plan[1]["layers"]) < sum(layer["params"] for layer in plan[0]["layers"]) / 3


@pytest.mark.slow
def test_inspect_prints_the_plan_of_a_model_file_without_training(tmp_path):
    from tests._user_models import nested_blocks

    model = nested_blocks((8, 8, 1), 10)
    model.save(tmp_path / "m.keras")
    flip, _ = model.get_layer("augment").layers
    conv, bn = model.get_layer("features").layers[:2]
    command = [sys.executable, "-m", "pipeline.inspect", "recipe=qat_int8", "model=file", "model.path=m.keras"]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = {line.split("|")[1].strip(): line for line in done.stdout.splitlines() if line.startswith("| ")}
    assert "quantization-aware" in rows[conv.name] and "quantization-aware" in rows[bn.name]  # inside the blocks
    assert "calibrated (no TFMOT support for RandomFlip)" in rows[flip.name]
    assert not (tmp_path / "outputs").exists()  # nothing ran, nothing was written
    assert not any(map(is_native_note, done.stderr.splitlines()))  # TensorFlow's start-up notes stay off the terminal
    wrong = subprocess.run([*command[:-1], "model.path=missing.keras"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert wrong.returncode == 2 and wrong.stderr.strip().splitlines()[-1].startswith("error: model.path: no such file")
