"""Models: built-in architectures and a user's own, registered in the `pipeline.models` entry-point group.

A model plugin has a `Config` schema and `build(input_shape, num_classes)` returning an
uncompiled tf-keras model whose last layer outputs logits; built-ins also state what data they
take in `check`. `check_compatible(builder, data)` compares a model with the data before training.

Two optional methods serve models that come as files: `prepare(data)`, called once the data is
loaded and before any model is built (a Keras 3 file is rebuilt in tf-keras and checked on a
batch of it), and `start()`, a `ModelArtifact` the recipe starts from when the model is not a
Keras model at all (an inference-only SavedModel), read without importing TensorFlow.
"""

from __future__ import annotations

from typing import Any

from pipeline.artifact import ModelArtifact
from pipeline.models.builtin import MLP, Architecture, ModelParams, SmallCNN, SmallCNNParams
from pipeline.models.compat import check_compatible

__all__ = [
    "MLP", "Architecture", "ModelParams", "SmallCNN", "SmallCNNParams", "check_compatible", "prepare", "starting_artifact",
]


def starting_artifact(builder: Any) -> ModelArtifact | None:
    """The model file a recipe starts from, when the model plugin offers one instead of a Keras model."""
    start = getattr(builder, "start", None)
    return start() if start is not None else None


def prepare(builder: Any, data: Any) -> None:
    """Let a model plugin use the loaded data before any model is built (a no-op for most)."""
    hook = getattr(builder, "prepare", None)
    if hook is not None:
        hook(data)
