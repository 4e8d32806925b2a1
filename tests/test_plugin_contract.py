"""The stage contract enforces itself: the README's plugin, as written, keeps what earlier stages did;
a plugin that breaks the contract fails with one line; a plugin declares its schema once."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.api import Effect, Field, ModelArtifact, ModelFormat, Params, PipelineError, Stage, save_keras
from pipeline.testing import run_stage, stage_context, tiny_keras_artifact

README = Path(__file__).parents[1] / "README.md"


def plugin_section_blocks() -> list[str]:
    """The Python code blocks of the README's 'Writing a stage plugin' section, in order."""
    text = README.read_text()
    section = text[text.index("### Writing a stage plugin") :]
    section = section[: section.index("\n## ")]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


@pytest.fixture
def readme_plugin(tmp_path, monkeypatch):
    """The README's plugin module, importable as `acme_stages` exactly as the README writes it."""
    plugin, _ = plugin_section_blocks()
    site = tmp_path / "site"
    site.mkdir()
    (site / "acme_stages.py").write_text(plugin)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delitem(sys.modules, "acme_stages", raising=False)
    yield plugin
    sys.modules.pop("acme_stages", None)  # other tests install their own `acme_stages`


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    return tmp_path_factory.mktemp("run")


@pytest.fixture(scope="module")
def pruned(run_folder):
    """A trained tiny model standing in for prune's output: pruned, with prune's facts."""
    ctx = stage_context(run_folder, "after_prune", index=2)
    return tiny_keras_artifact(ctx, effects={Effect.PRUNED}, name="prune", target_sparsity=0.5, pruned_layers=["dense"])


def test_readme_plugin_after_prune_keeps_effects_and_metadata_it_never_mentions(readme_plugin, run_folder, pruned):
    import acme_stages

    body = readme_plugin.split("class RoundWeights", 1)[1]
    assert not re.search(r"effects|metadata|parent|Effect", body)  # the contract does that, not the example
    ctx = stage_context(run_folder, "round_weights", index=3)
    out = run_stage(acme_stages.RoundWeights, {"decimals": 1}, pruned, ctx)

    assert out.effects == {Effect.PRUNED}  # a later qat still picks pruning-preserving QAT
    assert out.metadata == {"target_sparsity": 0.5, "pruned_layers": ["dense"], "rounded_to": 1}
    assert out.parent is pruned and out.stage == "round_weights" and out.format is ModelFormat.KERAS
    assert out.path.parent == ctx.workdir
    kernels = [w for w in out.load_keras().weights if "kernel" in w.name]
    assert kernels and all(np.array_equal(k.numpy(), np.round(k.numpy(), 1)) for k in kernels)


def test_readme_test_runs_as_written(readme_plugin, tmp_path):
    _, test_code = plugin_section_blocks()
    namespace: dict = {}
    exec(compile(test_code, "README.md", "exec"), namespace)  # noqa: S102 - the README's own example
    (test,) = [value for name, value in namespace.items() if name.startswith("test_")]
    test(tmp_path)


class Nothing(Params):
    """No parameters."""


class OutsideWorkdir(Stage[Nothing]):
    """Saves next to the run folder instead of in its own."""

    def run(self, model, ctx):
        path = ctx.run_dir.parent / "elsewhere.keras"
        model.load_keras().save(path)
        return ModelArtifact(path, ModelFormat.KERAS, ctx.name)


class WrongFormat(Stage[Nothing]):
    """Declares Keras (the default) but hands on a TFLite file."""

    def run(self, model, ctx):
        path = ctx.workdir / "model.tflite"
        path.write_bytes(b"not really")
        return ModelArtifact(path, ModelFormat.TFLITE, ctx.name, model)


class ClaimsEffects(Stage[Nothing]):
    """Sets effects on the artifact that effects_after does not declare."""

    def run(self, model, ctx):
        saved = save_keras(model.load_keras(), ctx, model)
        return ModelArtifact(saved.path, saved.format, ctx.name, model, effects=frozenset({Effect.CLUSTERED}))


@pytest.mark.parametrize(
    ("stage", "problem"),
    [
        (OutsideWorkdir, r"returned \S+elsewhere\.keras, outside the stage's folder"),
        (WrongFormat, r"returned a tflite model but the stage declares keras"),
        (ClaimsEffects, r"returned effects \{clustered\} but effects_after declares \{pruned\}"),
    ],
)
def test_a_plugin_breaking_the_contract_fails_with_one_line_naming_it(stage, problem, run_folder, pruned):
    ctx = stage_context(run_folder, stage.__name__.lower(), index=3)
    with pytest.raises(PipelineError, match=problem) as caught:
        run_stage(stage, {}, pruned, ctx)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"stages.{ctx.name} (plugin {__name__}:{stage.__name__}): ")


def test_config_comes_from_the_generic_parameter():
    class RoundParams(Params):
        decimals: int = Field(2, ge=0)

    class Round(Stage[RoundParams]):
        pass

    class Explicit(Stage):  # third-party style: no parameter, Config set by hand
        Config = RoundParams

    class Narrower(RoundParams):
        pass

    class Refined(Stage[RoundParams]):
        Config = Narrower  # a subclass of the parameter is allowed

    assert Round.Config is RoundParams and Explicit.Config is RoundParams and Refined.Config is Narrower
    assert Round(RoundParams(decimals=3)).config.decimals == 3
    with pytest.raises(TypeError, match="is not RoundParams"):

        class Contradicts(Stage[RoundParams]):
            Config = Nothing


def test_builtin_plugins_derive_their_schemas():
    from pipeline.plugin import registry

    configs = {name: registry.load(registry.STAGES, name, "x").Config.__name__ for name in ("train", "qat", "sensitivity")}
    assert configs == {"train": "TrainParams", "qat": "QuantizeAwareParams", "sensitivity": "SensitivityParams"}
    assert registry.load(registry.MODELS, "mlp", "x").Config.__name__ == "MLPParams"
    assert registry.load(registry.DATA, "digits", "x").Config.__name__ == "SplitParams"


def test_execute_cannot_be_overridden():
    with pytest.raises(TypeError, match="execute is the runner's entry point"):

        class Sneaky(Stage[Nothing]):
            def execute(self, model, ctx):  # type: ignore[misc]
                return model


def test_a_new_distilled_student_keeps_its_teacher_as_parent_but_not_its_facts(run_folder, pruned):
    from stages.distill import DistillStage

    ctx = stage_context(run_folder, "distill", index=3)
    out = run_stage(DistillStage, {"student": {"name": "small_cnn", "width": 0.25}, "epochs": 1}, pruned, ctx)
    assert out.parent is pruned and out.effects == {Effect.DISTILLED}
    assert "target_sparsity" not in out.metadata and out.metadata["distilled"] is True
