"""The public module for plugin authors: everything a stage plugin needs, from one import.

A stage is a class with a typed config and one `run` method::

    from pipeline.api import Field, Params, Stage, save_keras

    class RoundParams(Params):
        decimals: int = Field(1, ge=0, description="Decimals kept in every weight.")

    class RoundWeights(Stage[RoundParams]):         # the generic parameter is the config schema
        def run(self, model, ctx):
            keras_model = model.load_keras()
            ...
            return save_keras(keras_model, ctx, model)

The runner calls `Stage.execute`, which runs `run` and completes and checks what it returns:
the parent is the input model, the input's metadata is carried forward under the stage's own
keys, the effects are what `effects_after` declares, and the file must lie in `ctx.workdir` in
the format `produces` promises. `pipeline.testing` runs a stage the same way on a tiny model.

Names:

- `Stage`: base class of stage plugins (`accepts`, `produces`, `effects_after`, `check_input`, `run`).
- `StageContext`: what a running stage may use: its `workdir`, the `data`, `build_model`, `log`, ...
- `ModelArtifact`: a model file and its lineage, what stages hand each other.
- `ModelFormat`: the file formats stages exchange (keras, saved_model, tflite).
- `Effect`: what a model has been through (pruned, clustered, ...) that a later stage relies on.
- `Params`: base of config schemas (strict types, unknown keys are errors); `Field` is pydantic's.
- `PipelineError`: the error for a user's mistake: one line naming the config key and the fix.
- `save_keras`, `measure`, `configure_model`: below.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from pydantic import Field

from pipeline.errors import PipelineError
from pipeline.plugin.artifact import Effect, ModelArtifact, ModelFormat
from pipeline.plugin.schema import Params, parse
from pipeline.plugin.stage import Stage, StageContext

__all__ = [
    "Effect",
    "Field",
    "ModelArtifact",
    "ModelFormat",
    "Params",
    "PipelineError",
    "Stage",
    "StageContext",
    "configure_model",
    "measure",
    "save_keras",
]


def save_keras(
    model: Any, ctx: StageContext, parent: ModelArtifact | None = None, *,
    metrics: Mapping[str, float] | None = None, **metadata: Any,
) -> ModelArtifact:
    """Save the tf-keras `model` as `<ctx.workdir>/model.keras` and return it as this stage's output.

    The file is float32 and without optimizer state (sizes measure the model, not Adam's moments),
    and layers a model plugin froze for a first fit are trainable again. `metadata` holds this
    stage's own facts for later stages and the export; `metrics` numbers about its own work,
    which the runner logs. `parent` is the model it was made from (the input when omitted; the
    parent's metadata and the effects are filled in by `Stage.execute`).
    """
    from techniques.training import save_keras as save

    saved = save(model, None, ctx.workdir, ctx.name, ctx.log, effects=frozenset(), metrics=dict(metrics or {}), **metadata)
    return dataclasses.replace(saved, parent=parent)


def measure(artifact: ModelArtifact, ctx: StageContext) -> dict[str, float]:
    """What the runner measures for every stage's output, with the run's `measure` settings:
    size_bytes, gzip_bytes, params, sparsity, macs, accuracy (test), val_accuracy and latency
    percentiles (ms). For a stage that compares candidates the way the run will judge them."""
    from pipeline.config.settings import MeasureParams
    from pipeline.measure.metrics import measure as measured

    return measured(artifact, ctx.data, parse(MeasureParams, ctx.config.get("measure"), "measure"))


def configure_model(values: Mapping[str, Any], where: str = "model") -> Any:
    """The model plugin `values` configures, as the `model` group does: `{name: small_cnn, width: 0.5}`.

    Call its `build(input_shape, num_classes)` for an uncompiled tf-keras model (e.g. a student
    to distil into). A wrong name or key is a PipelineError naming `where.key`.
    """
    from pipeline.config.recipe import configure
    from pipeline.plugin import registry

    return configure(registry.MODELS, values, where)
