"""A test kit for plugin authors: real data, a real tiny model and a stage context, in a few lines.

    from pipeline.testing import run_stage, stage_context, tiny_keras_artifact

    def test_round_weights(tmp_path):
        ctx = stage_context(tmp_path, "round_weights")
        out = run_stage(RoundWeights, {"decimals": 1}, tiny_keras_artifact(ctx), ctx)
        assert out.path.exists()

Everything is real TensorFlow on a few hundred of scikit-learn's 8x8 digits, and `run_stage`
goes through `Stage.execute`, as the runner does, so the contract's checks apply.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from pipeline.api import Effect, ModelArtifact, PipelineError, Stage, StageContext, configure_model, save_keras
from pipeline.data import Dataset
from pipeline.plugin.schema import parse

# Small enough for a one-epoch fit in about a second on a CPU, large enough that every class
# appears in each split.
TINY_EXAMPLES = 600
# A small CNN at a quarter of its width: the same layer kinds as the default model, few weights.
TINY_MODEL = {"name": "small_cnn", "width": 0.25}
# The runner's measure settings, shortened: two timed runs are enough to exercise latency.
QUICK_MEASURE = {"latency_runs": 2, "warmup_runs": 0, "threads": 1}


def tiny_data(examples: int = TINY_EXAMPLES, seed: int = 0) -> Dataset:
    """A seeded, stratified subset of the digits data (8x8x1 images, 10 classes), split as runs split it."""
    from pipeline.config.recipe import configure
    from pipeline.plugin import registry

    return configure(registry.DATA, {"name": "digits", "max_examples": examples}, "data").load(seed)


def stage_context(
    tmp_path: Path, name: str = "stage", index: int = 1, data: Dataset | None = None,
    model: Mapping[str, Any] | None = None, seed: int = 0, config: Mapping[str, Any] | None = None,
) -> StageContext:
    """A StageContext for stage `name` (at position `index`) in a run folder `tmp_path`.

    Its workdir is `<tmp_path>/stages/<index>_<name>`, made here; `build_model` builds `model`
    (a model-group mapping, default a narrow small_cnn) for `data` (default `tiny_data()`), and
    `config` is the run's resolved configuration (default: quick measure settings only).
    """
    data = data if data is not None else tiny_data(seed=seed)
    builder = configure_model(model or TINY_MODEL)
    workdir = tmp_path / "stages" / f"{index}_{name}"
    workdir.mkdir(parents=True, exist_ok=True)
    return StageContext(
        name=name, index=index, workdir=workdir, run_dir=tmp_path, seed=seed, data=data,
        build_model=lambda: builder.build(data.input_shape, data.num_classes),
        log=logging.getLogger(f"pipeline.testing.{name}"),
        config=dict(config) if config is not None else {"measure": dict(QUICK_MEASURE)},
    )


def tiny_keras_artifact(
    ctx: StageContext, epochs: int = 1, effects: Collection[Effect] = (), name: str = "train", **metadata: Any,
) -> ModelArtifact:
    """`ctx.build_model()` trained for `epochs` on `ctx.data`, saved as the output of an earlier stage `name`.

    It goes in that stage's own folder beside `ctx.workdir`. `effects` and `metadata` make it
    stand in for the output of a stage that declares them (a pruned model: `{Effect.PRUNED}`
    and `target_sparsity=0.5`); the weights are only trained.
    """
    import dataclasses

    import tf_keras as keras

    earlier = dataclasses.replace(ctx, name=name, index=ctx.index - 1, workdir=ctx.run_dir / "stages" / f"{ctx.index - 1}_{name}")
    earlier.workdir.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(ctx.seed)
    model = ctx.build_model()
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    model.fit(ctx.data.x_train, ctx.data.y_train, epochs=epochs, batch_size=32, verbose=0)
    return dataclasses.replace(save_keras(model, earlier, **metadata), effects=frozenset(effects))


def run_stage(
    stage: type[Stage] | Stage, params: Mapping[str, Any] | None, model: ModelArtifact | None, ctx: StageContext,
) -> ModelArtifact:
    """Run `stage` on `model` as the runner would, and return its checked output.

    A stage class is made with `params` parsed through its schema (a wrong key is the same
    PipelineError a recipe gets); an instance is run as it is (then `params` must be None). The
    input is checked against `accepts` and `check_input`, then `Stage.execute` runs it under the
    context's device scope, seeded as the runner seeds it.
    """
    from pipeline.run.runner import seed_everything

    where = f"stages.{ctx.name}"
    if isinstance(stage, Stage):
        if params:
            raise ValueError("run_stage: give params with a stage class, not with an instance made already")
        instance = stage
    else:
        instance = stage(parse(stage.Config, params, where))
    input_format = model.format if model is not None else None
    if input_format not in type(instance).accepts:
        wanted = " or ".join(sorted(f.value for f in type(instance).accepts if f is not None)) or "no"
        have = "no model" if input_format is None else f"a {input_format.value} model"
        raise PipelineError(f"{where}: needs a {wanted} model but gets {have}")
    instance.check_input(input_format, model.effects if model is not None else frozenset(), where)
    seed_everything(ctx.seed + ctx.index)
    with ctx.device.scope():
        return instance.execute(model, ctx)
