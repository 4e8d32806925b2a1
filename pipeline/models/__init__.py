"""Models: built-in architectures and a user's own, registered in the `pipeline.models` entry-point group.

A model plugin has a `Config` schema and `build(input_shape, num_classes)` returning an
uncompiled tf-keras model whose last layer outputs logits; built-ins also state what data they
take in `check(input_shape, num_classes, where)`. `check_compatible(builder, data, where)` compares a
model (the recipe's `model`, or a stage's own such as `stages.distill.student`) with the data before training;
`build(builder, data)` is how every stage gets a model: nested models flattened into one graph
(pipeline.models.flatten) and a final softmax removed, whatever plugin built it.

Optional methods serve models that come as files: `on_data_loaded(data)`, called once the data is
loaded and before any model is built (a Keras 3 file is rebuilt in tf-keras and checked on a
batch of it); `start_format()`, the format of the file the recipe starts from, told without
importing TensorFlow (recipes are checked against it); and `start()`, that file as a
`ModelArtifact`, which the runner hands to the first stage as its input. Plugins that build a
model have none of these (pipeline.models.hooks calls them): the first stage starts from nothing and calls `ctx.build_model()`.
"""

from __future__ import annotations

from pipeline.models.builtin import MLP, Architecture, ModelParams, SmallCNN, SmallCNNParams
from pipeline.models.compat import build, check_compatible
from pipeline.models.hooks import on_data_loaded, starting_artifact, starting_format

__all__ = [
    "MLP", "Architecture", "ModelParams", "SmallCNN", "SmallCNNParams", "build", "check_compatible",
    "on_data_loaded", "starting_artifact", "starting_format",
]
