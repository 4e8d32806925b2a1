"""Models: built-in architectures and a user's own, registered in the `pipeline.models` entry-point group.

A model plugin has a `Config` schema and `build(input_shape, num_classes)` returning an
uncompiled tf-keras model whose last layer outputs logits; built-ins also state what data they
take in `check`. `check_compatible(builder, data)` compares a model with the data before training;
`build(builder, data)` is how every stage gets a model: nested models flattened into one graph
(pipeline.models.flatten) and a final softmax removed, whatever plugin built it.
"""

from pipeline.models.builtin import MLP, Architecture, ModelParams, SmallCNN, SmallCNNParams
from pipeline.models.compat import build, check_compatible

__all__ = ["MLP", "Architecture", "ModelParams", "SmallCNN", "SmallCNNParams", "build", "check_compatible"]
