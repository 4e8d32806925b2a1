"""Models: built-in architectures and a user's own, registered in the `pipeline.models` entry-point group.

A model plugin has a `Config` schema and `build(input_shape, num_classes)` returning an
uncompiled tf-keras model whose last layer outputs logits; built-ins also state what data they
take in `check`. `check_compatible(builder, data)` compares a model with the data before training.
"""

from pipeline.models.builtin import MLP, Architecture, ModelParams, SmallCNN, SmallCNNParams
from pipeline.models.compat import check_compatible

__all__ = ["MLP", "Architecture", "ModelParams", "SmallCNN", "SmallCNNParams", "check_compatible"]
