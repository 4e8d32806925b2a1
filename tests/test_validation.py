"""A bad recipe fails before any work: one line naming the key, non-zero exit, nothing written."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pipeline.errors import PipelineError
from pipeline.recipe import build_plan
from tests.conftest import compose_config, run_cli

# (overrides, text the one-line message must contain)
BAD_OVERRIDES = [
    (["++stages.prune.type=prunee"], "stages.prune.type: unknown stage 'prunee'; did you mean 'prune'?"),
    (["++stages.prune.final_sparsty=0.3"], "stages.prune.final_sparsty: unknown key; did you mean 'final_sparsity'?"),
    (["stages.prune.final_sparsity=1.0"], "stages.prune.final_sparsity: expected less than 1 (got 1.0)"),
    (["stages.prune.final_sparsity=-0.1"], "stages.prune.final_sparsity: expected greater than or equal to 0"),
    (["stages.prune.final_sparsity=half"], "stages.prune.final_sparsity: expected a valid number (got 'half')"),
    (["stages.train.epochs=2.5"], "stages.train.epochs: expected a valid integer (got 2.5)"),
    (["stages.train.epochs=0"], "stages.train.epochs: expected greater than or equal to 1"),
    (["stages.quantize.mode=int4"], "stages.quantize.mode: expected 'none', 'dynamic', 'float16', 'int8' or 'int16x8'"),
    (["stages.export.formats=[onnx]"], "stages.export.formats.0: expected 'tflite', 'keras', 'h5' or 'saved_model'"),
    (["stages.prune.schedule=cubic"], "stages.prune.schedule: expected 'polynomial' or 'constant'"),
    (["++stages.prune.initial_sparsity=0.9"], "initial_sparsity must not exceed final_sparsity"),
    (["data.test_fraction=0.95"], "data: test_fraction + val_fraction must stay below 0.9"),
    (["model.width=0"], "model.width: expected greater than 0"),
    (["model.name=resnet"], "model.name: unknown model 'resnet'"),
    (["seed=-1"], "seed: expected greater than or equal to 0"),
    (["measure.threads=0"], "measure.threads: expected greater than or equal to 1"),
    (["~stages.train"], "stages.prune: needs a keras model but gets no model yet"),
    (["++stages.bogus.x=1"], "stages.bogus: unknown stage 'bogus'"),
]


@pytest.mark.parametrize("overrides, expected", BAD_OVERRIDES, ids=[o[0] for o, _ in BAD_OVERRIDES])
def test_bad_config_is_one_clear_line(tmp_path, overrides, expected):
    with pytest.raises(PipelineError) as raised:
        build_plan(compose_config(tmp_path, *overrides))
    message = str(raised.value)
    assert expected in message
    assert "\n" not in message


def test_stage_order_is_checked(tmp_path):
    cfg = compose_config(tmp_path)
    cfg.stages = {"quantize": {"mode": "int8"}, "prune": {}}
    with pytest.raises(PipelineError, match=r"stages.quantize: needs a keras model but gets no model yet"):
        build_plan(cfg)
    cfg.stages = {"train": {}, "quantize": {}, "prune": {}}
    with pytest.raises(PipelineError, match=r"stages.prune: needs a keras model but gets a tflite model from stages.quantize"):
        build_plan(cfg)


def test_defaults_fill_in_and_type_defaults_to_key(tmp_path):
    plan = build_plan(compose_config(tmp_path))
    assert [(p.name, p.type) for p in plan.stages] == [
        ("train", "train"), ("prune", "prune"), ("quantize", "quantize"), ("export", "export"),
    ]
    prune = plan.stages[1].stage.config
    assert prune.final_sparsity == 0.5 and prune.ramp_fraction == 0.7  # recipe value, schema default


def test_validation_does_not_import_tensorflow(tmp_path):
    code = textwrap.dedent(
        f"""
        import sys
        from tests.conftest import compose_config
        from pipeline.recipe import build_plan
        build_plan(compose_config(__import__("pathlib").Path({str(tmp_path)!r})))
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "tf_keras", "mlflow")))
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


USER_RECIPES = {
    "quantize_first": "stages:\n  quantize: {mode: int8}\n  export: {}\n",
    "typo_top_level": "stgaes:\n  train: {}\n",
    "not_a_mapping": "stages:\n  train: 3\n",
    "unterminated": "stages:\n  train: {epochs: 3\n",
}

# (command-line arguments, text the single stderr line must contain)
CLI_CASES = [
    (["recipe=mobile_in8"], "recipe=mobile_in8: no such recipe; did you mean 'mobile_int8'?"),
    (["data=imagenet"], "data=imagenet: no such data"),
    (["stages.prune.final_sparsity=1.5"], "stages.prune.final_sparsity: expected less than 1 (got 1.5)"),
    (["stages.prune.frequncy=3"], "stages.prune.frequncy: unknown key; did you mean 'frequency'?"),
    (["-m", "stages.prune.final_sparsity=0.5,1.5"], "stages.prune.final_sparsity: expected less than 1 (got 1.5)"),
    (["recipe=quantize_first"], "stages.quantize: needs a keras model but gets no model yet"),
    (["recipe=typo_top_level"], "stgaes: unknown key; did you mean 'stages'?"),
    (["recipe=not_a_mapping"], "stages.train: expected a mapping of parameters, got 3"),
]


@pytest.mark.parametrize("args, expected", CLI_CASES, ids=[" ".join(a) for a, _ in CLI_CASES])
def test_cli_rejects_bad_input_before_writing_anything(tmp_path, args, expected):
    user = tmp_path / "user_recipes" / "recipe"
    user.mkdir(parents=True)
    for name, text in USER_RECIPES.items():
        (user / f"{name}.yaml").write_text("# @package _global_\n" + text)
    done = run_cli("--config-dir", str(user.parent), *args, cwd=tmp_path, env={"PYTHONPATH": str(Path(__file__).parents[1])})
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], done.stderr
    assert not (tmp_path / "outputs").exists()


def test_malformed_yaml_fails_without_writing(tmp_path):
    user = tmp_path / "user_recipes" / "recipe"
    user.mkdir(parents=True)
    (user / "broken.yaml").write_text("# @package _global_\n" + USER_RECIPES["unterminated"])
    done = run_cli("--config-dir", str(user.parent), "recipe=broken", cwd=tmp_path)
    assert done.returncode != 0
    assert "broken.yaml" in done.stderr or "while parsing" in done.stderr
    assert not (tmp_path / "outputs").exists()
