"""A bad recipe fails before any work: one line naming the key, non-zero exit, nothing written."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pipeline.config.recipe import check_recipe
from pipeline.errors import PipelineError
from tests._runs import compose_config

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
    (["stages.export.formats=[onnx]"], "stages.export.formats.0: expected 'tflite', 'keras', 'h5', 'saved_model' or 'keras3'"),
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
        check_recipe(compose_config(tmp_path, *overrides))
    message = str(raised.value)
    assert expected in message
    assert "\n" not in message


def test_stage_order_is_checked(tmp_path):
    cfg = compose_config(tmp_path)
    cfg.stages = {"quantize": {"mode": "int8"}, "prune": {}}
    with pytest.raises(PipelineError, match=r"stages.quantize: needs a keras or saved_model model but gets no model yet"):
        check_recipe(cfg)
    cfg.stages = {"train": {}, "quantize": {}, "prune": {}}
    with pytest.raises(PipelineError, match=r"stages.prune: needs a keras model but gets a tflite model from stages.quantize"):
        check_recipe(cfg)


def test_defaults_fill_in_and_type_defaults_to_key(tmp_path):
    plan = check_recipe(compose_config(tmp_path))
    assert [(p.name, p.type) for p in plan.stages] == [
        ("train", "train"), ("prune", "prune"), ("quantize", "quantize"), ("export", "export"),
    ]
    prune = plan.stages[1].stage.config
    assert prune.final_sparsity == 0.5 and prune.ramp_fraction == 0.7  # recipe value, schema default


def test_validation_does_not_import_tensorflow(tmp_path):
    code = textwrap.dedent(
        f"""
        import sys
        from tests._runs import compose_config
        from pipeline.config.recipe import check_recipe
        check_recipe(compose_config(__import__("pathlib").Path({str(tmp_path)!r})))
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "tf_keras", "mlflow")))
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


ARTICLE = " ".join(["the quick brown fox jumps over the lazy dog"] * 45)  # a 2,000-character text field


def test_quoted_values_are_cut_to_a_readable_length():
    from pipeline.errors import quoted

    assert quoted("setosa") == "'setosa'" and quoted(2.5) == "2.5"
    assert quoted(ARTICLE) == repr(ARTICLE[:57])[:-1] + "…'" and len(quoted(ARTICLE)) == 60
    assert quoted(list(range(1000))).endswith("…") and len(quoted(list(range(1000)))) == 60


def test_a_long_text_field_in_a_csv_is_quoted_short(tmp_path):
    from pipeline.data.arrays import CsvParams, CsvSource

    path = tmp_path / "articles.csv"
    path.write_text("length,article,label\n" + "".join(f'{i},"{ARTICLE}",{i % 2}\n' for i in range(20)))
    with pytest.raises(PipelineError) as raised:
        CsvSource(CsvParams(name="csv", path=str(path))).load(seed=0)
    message = str(raised.value)
    assert message.startswith("data.features: column 'article' line 2 holds 'the quick brown fox")
    assert "…'" in message and len(message) < 200, message


def test_a_long_config_value_is_quoted_short(tmp_path):
    with pytest.raises(PipelineError) as raised:
        check_recipe(compose_config(tmp_path, f"stages.prune.final_sparsity='{ARTICLE}'"))
    message = str(raised.value)
    assert f"stages.prune.final_sparsity: expected a valid number (got '{ARTICLE[:57]}…');" in message


@pytest.mark.parametrize("argv, expected", [
    (["recipe=mobile_int8", "seeds=3"], "seeds: unknown key; did you mean 'seed'? (valid: budget, cache, data, "),
    (["-m", "recipe=mobile_int8", "seeds=1,2"], "seeds: unknown key; did you mean 'seed'?"),
    (["recipe=mobile_int8", "qqq=1"], "qqq: unknown key (valid: budget, cache, data, description, device, hydra, "),
    (["tsk=regression"], "tsk: unknown key; did you mean 'task'?"),
    (["mesure.threads=2"], "mesure: unknown key; did you mean 'measure'?"),
])
def test_a_mistyped_top_level_key_is_one_line_with_the_closest_key(argv, expected):
    from pipeline.config.arguments import expand_arguments

    with pytest.raises(PipelineError) as raised:
        expand_arguments(argv)
    assert str(raised.value).startswith(expected) and "+" not in str(raised.value)


def test_added_keys_nested_keys_and_hydra_groups_pass_to_hydra(tmp_path):
    from pipeline.config.arguments import expand_arguments

    (tmp_path / "extra" / "mine.yaml").parent.mkdir()
    (tmp_path / "extra" / "mine.yaml").write_text("{}\n")
    given = ["-m", "+tsk=1", "++other.x=2", "hydra/launcher=basic", "hydra.job.chdir=false", "seed=1,2", "extra=mine"]
    assert expand_arguments(["--config-dir", str(tmp_path), *given]) == ["--config-dir", str(tmp_path), *given]
    assert expand_arguments(["stages.prune.final_sparsty=0.3"]) == ["++stages.prune.final_sparsty=0.3"]  # the schema reports it
