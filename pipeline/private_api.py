"""Private TensorFlow, tf-keras, TFMOT and Hydra APIs the pipeline relies on, in one place.

Each one does a job no public API does (said per function). They were checked against the versions
in `CHECKED`: `python -m pipeline.doctor` warns when the installed ones differ, and
tests/test_private_api.py fails as soon as an upgrade moves or renames one of them.
Imports stay inside the functions: importing this module costs nothing.
"""

from __future__ import annotations

from importlib import metadata
from typing import Any

# Distribution name -> the major.minor every API below was checked against.
CHECKED = {
    "tensorflow": "2.21", "tf-keras": "2.21", "tensorflow-model-optimization": "0.8", "hydra-core": "1.3",
    "ai-edge-quantizer": "0.10",
}


def untested_versions() -> list[str]:
    """`name installed (checked: version)` for each installed distribution whose major.minor differs."""
    found = []
    for name, checked in CHECKED.items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
        if ".".join(installed.split(".")[:2]) != checked:
            found.append(f"{name} {installed} (checked: {checked})")
    return found


def keras_history(tensor: Any) -> tuple[Any, int, int]:
    """(layer, node index, tensor index) of the call that made the symbolic tf-keras `tensor`: which
    call of a layer object it came from, which a flattened model's shared layers need."""
    layer, node_index, tensor_index = tensor._keras_history
    return layer, node_index, tensor_index


def producing_layer(tensor: Any) -> Any:
    """The tf-keras layer whose call made the symbolic `tensor`."""
    return keras_history(tensor)[0]


def is_graph_network(model: Any) -> bool:
    """Whether a tf-keras model is a functional graph of layers (not subclassed code)."""
    return bool(getattr(model, "_is_graph_network", False))


def nodes_by_depth(model: Any) -> dict[int, list[Any]]:
    """A functional model's call nodes grouped by depth (0 = outputs): its graph in call order."""
    return model._nodes_by_depth


def is_symbolic(value: Any) -> bool:
    """Whether `value` is a symbolic tf-keras tensor (a functional graph's), not a concrete one."""
    from tf_keras.src.engine.keras_tensor import KerasTensor

    return isinstance(value, KerasTensor)


def rename_layer(layer: Any, name: str) -> None:
    """Give a built tf-keras layer another name (Keras offers no setter): two nested models may both
    hold a `dense`, and one flat graph needs unique names."""
    layer._name = name


def safe_mode_scope(safe_mode: bool) -> Any:
    """A context in which tf-keras applies `safe_mode` to every loader, not only to .keras files
    (the .h5 and SavedModel loaders otherwise rebuild Lambda layers from raw bytecode)."""
    from tf_keras.src.saving.serialization_lib import SafeModeScope

    return SafeModeScope(safe_mode)


def prunable(layer: Any) -> bool:
    """Whether TFMOT can prune `layer`: it implements PrunableLayer, or the registry knows it and lists
    weights of it to prune. `prune_low_magnitude` raises on any other; asking first lets a stage
    leave the layer dense and name it."""
    import tensorflow_model_optimization as tfmot
    from tensorflow_model_optimization.python.core.sparsity.keras.prune_registry import PruneRegistry

    if isinstance(layer, tfmot.sparsity.keras.PrunableLayer):
        return True
    return PruneRegistry.supports(layer) and bool(PruneRegistry._weight_names(layer))


def clusterable(layer: Any) -> bool:
    """Whether TFMOT can cluster `layer`: it implements ClusterableLayer, or the registry lists weights
    of it to cluster (the registry "supports" DepthwiseConv2D but lists none of its weights)."""
    import tensorflow_model_optimization as tfmot
    from tensorflow_model_optimization.python.core.clustering.keras.clustering_registry import ClusteringRegistry

    if isinstance(layer, tfmot.clustering.keras.ClusterableLayer):
        return True
    return ClusteringRegistry.supports(layer) and bool(ClusteringRegistry._weight_names(layer))


def cluster_weights(layer: Any, **options: Any) -> Any:
    """TFMOT's `cluster_weights` that also takes `cluster_per_channel` (the public one does not)."""
    from tensorflow_model_optimization.python.core.clustering.keras.experimental import cluster

    return cluster.cluster_weights(layer, **options)


def quantize_scheme(name: str) -> Any:
    """TFMOT's quantization-aware scheme `name`: default, pqat, or cqat / pcqat (cluster-preserving,
    which TFMOT's public `experimental.combine` does not export; pcqat also keeps the zeros)."""
    import tensorflow_model_optimization as tfmot
    from tensorflow_model_optimization.python.core.quantization.keras.collab_opts.cluster_preserve import (
        default_8bit_cluster_preserve_quantize_scheme as cluster_preserve,
    )
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import default_8bit_quantize_scheme

    schemes = {
        "default": default_8bit_quantize_scheme.Default8BitQuantizeScheme,
        "pqat": tfmot.experimental.combine.Default8BitPrunePreserveQuantizeScheme,
        "cqat": lambda: cluster_preserve.Default8BitClusterPreserveQuantizeScheme(preserve_sparsity=False),
        "pcqat": lambda: cluster_preserve.Default8BitClusterPreserveQuantizeScheme(preserve_sparsity=True),
    }
    return schemes[name]()


def default_8bit_registry() -> Any:
    """The registry of TFMOT's default 8-bit scheme: which layers its configs can quantize."""
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import default_8bit_quantize_registry

    return default_8bit_quantize_registry.Default8BitQuantizeRegistry()


def default_8bit_config_class() -> Any:
    """TFMOT's `Default8BitQuantizeConfig`: the default scheme's configuration of a layer with a kernel
    (8-bit activations), to subclass with another weight quantizer."""
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import default_8bit_quantize_registry

    return default_8bit_quantize_registry.Default8BitQuantizeConfig


def prune_preserving_quantizer(num_bits: int, per_axis: bool, symmetric: bool, narrow_range: bool) -> Any:
    """The weight quantizer of TFMOT's prune-preserving scheme (zeros stay zero) at any bit width: the
    scheme itself builds only its 8-bit subclasses."""
    from tensorflow_model_optimization.python.core.quantization.keras.collab_opts.prune_preserve import (
        prune_preserve_quantize_registry as registry,
    )

    return registry.PrunePreserveDefaultWeightsQuantizer(num_bits, per_axis, symmetric, narrow_range)


def read_tflite(path: str) -> Any:
    """The TFLite flatbuffer at `path` as TensorFlow's object model (operators, tensors, buffers)."""
    from tensorflow.lite.tools import flatbuffer_utils

    return flatbuffer_utils.read_model(path)


def tflite_from_bytes(flatbuffer: bytes) -> Any:
    """A TFLite flatbuffer held in memory, as `read_tflite` reads a file."""
    from tensorflow.lite.tools import flatbuffer_utils

    return flatbuffer_utils.convert_bytearray_to_object(bytearray(flatbuffer))


def tflite_operator_names() -> dict[int, str]:
    """TFLite builtin operator code -> name, from the schema TensorFlow ships."""
    from tensorflow.lite.python import schema_py_generated as schema

    return {code: name for name, code in vars(schema.BuiltinOperator).items() if not name.startswith("_")}


def min_max_ranges(float_flatbuffer: bytes, recipe: Any, samples: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """ai-edge-quantizer's activation ranges for `recipe` (its recipe list), as the global min and max over
    `samples` ({signature: [{input name: batch}]}), which is what TFLiteConverter calibrates.

    `Quantizer.calibrate` keeps a moving average of each sample's min/max instead, which clipped ranges
    so hard that the logits' error was 150x the converter's; only its `Calibrator` takes another update.
    """
    from ai_edge_quantizer import calibrator, recipe_manager
    from ai_edge_quantizer.utils import qsv_utils

    manager = recipe_manager.RecipeManager()
    manager.load_quantization_recipe(recipe)
    calibration = calibrator.Calibrator(float_flatbuffer, num_threads=1, qsv_update_func=qsv_utils.min_max_update)
    calibration.calibrate(samples, manager)
    return dict(calibration.get_model_qsvs())


def frozen_function(function: Any) -> Any:
    """A concrete function with its variables folded into constants (what the converter needs
    when a SavedModel signature also reads state inference does not use)."""
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    return convert_variables_to_constants_v2(function)


def hydra_argument_parser() -> Any:
    """Hydra's own command-line parser, so the pipeline reads its flags exactly as Hydra will."""
    from hydra._internal.utils import get_args_parser

    return get_args_parser()
