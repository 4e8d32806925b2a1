"""Models: built-in architectures and a user's own, registered in the `pipeline.models` entry-point group.

A model plugin has a `Config` schema and `build(input_shape, num_classes)` returning an
uncompiled tf-keras model whose last layer outputs logits; built-ins also state what data they
take in `check(input_shape, num_classes, where)`. `check_compatible(builder, data, where)` compares a
model (the recipe's `model`, or a stage's own such as `stages.distill.student`) with the data before training;
`build(builder, data)` is how every stage gets a model: nested models flattened into one graph
(pipeline.models.flatten) and a final softmax removed, whatever plugin built it.

Optional methods serve models that come as files: `prepare(data)`, called once the data is
loaded and before any model is built (a Keras 3 file is rebuilt in tf-keras and checked on a
batch of it); `start_format()`, the format of the file the recipe starts from, told without
importing TensorFlow (recipes are checked against it); and `start()`, that file as a
`ModelArtifact`, which the runner hands to the first stage as its input. Plugins that build a
model have none of these: the first stage starts from nothing and calls `ctx.build_model()`.
"""

from __future__ import annotations

from typing import Any

from pipeline.artifact import ModelArtifact, ModelFormat
from pipeline.models.builtin import MLP, Architecture, ModelParams, SmallCNN, SmallCNNParams
from pipeline.models.compat import build, check_compatible

__all__ = [
    "MLP", "Architecture", "ModelParams", "SmallCNN", "SmallCNNParams", "build", "check_compatible", "prepare",
    "starting_artifact", "starting_format",
]


def starting_format(builder: Any) -> ModelFormat | None:
    """The format of the model file a recipe starts from; None when the first stage builds the model."""
    start_format = getattr(builder, "start_format", None)
    return start_format() if start_format is not None else None


def starting_artifact(builder: Any) -> ModelArtifact | None:
    """The model file the first stage gets as its input; None when it builds the model itself."""
    start = getattr(builder, "start", None)
    return start() if start is not None else None


def prepare(builder: Any, data: Any) -> None:
    """Let a model plugin use the loaded data before any model is built (a no-op for most)."""
    hook = getattr(builder, "prepare", None)
    if hook is not None:
        hook(data)
