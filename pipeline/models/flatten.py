"""One flat functional graph from a nested Keras model, with the same layer objects and weights.

Users build models from blocks: `Sequential` blocks inside a functional model, a
`keras.applications` base called as a layer (often with `training=False`) behind a new head.
TFMOT's pruning, clustering and quantization wrappers, and `clone_model`, see such a block as one
opaque layer. `flatten` re-traces the model layer by layer, descending into every nested
functional or `Sequential` model, so that each technique sees the layers inside:

- the layers are the same objects, so weights (and trainability) are shared, not copied, and a
  layer used twice (a shared layer, a block called twice) stays one layer used twice;
- `training=False` given to a nested model's call is passed on to every layer inside it that
  takes `training`, so a frozen base's BatchNormalization keeps running in inference mode;
- a layer whose name another layer of the flat graph already has gets the name of the block it
  came from as a prefix (`block_conv`), since a Keras model needs unique layer names;
- subclassed models (no layer graph) stay one layer.

The result is checked: its predictions on a batch must equal the original's.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.errors import PipelineError
from pipeline.private_api import is_graph_network, is_symbolic, nodes_by_depth, rename_layer

# Float32 rounding may differ by the order of a few ulps where Keras fuses ops differently.
RELATIVE_TOLERANCE = 1e-5


def is_graph_model(layer: Any) -> bool:
    """Whether `layer` is a functional or Sequential model with a layer graph (not subclassed)."""
    import tf_keras as keras

    return isinstance(layer, keras.Model) and is_graph_network(layer)


def is_nested(model: Any) -> bool:
    """Whether any layer of `model` is itself a model."""
    import tf_keras as keras

    return any(isinstance(layer, keras.Model) for layer in getattr(model, "layers", []))


def flatten(model: Any, sample: Any = None, where: str = "model") -> Any:
    """`model` as one functional graph of its innermost layers; `model` itself when nothing is nested.

    `sample` is a batch the two models must agree on (default: four random examples); a
    disagreement is a PipelineError naming `where`. Subclassed models are returned unchanged.
    """
    import tf_keras as keras

    if not is_graph_model(model) or not is_nested(model):
        return model
    inputs = [
        keras.Input(batch_shape=tensor.shape, dtype=tensor.dtype, name=name)
        for tensor, name in zip(model.inputs, model.input_names)
    ]
    tracer = _Tracer(taken=set(model.input_names))
    outputs = tracer.inline(model, inputs, training=None, scope="")
    flat = keras.Model(inputs if len(inputs) > 1 else inputs[0], outputs, name=model.name)
    check_same_predictions(model, flat, sample, where)
    return flat


class _Tracer:
    """Calls each innermost layer of nested models on new tensors, remembering the names it has given."""

    def __init__(self, taken: set[str]):
        self.taken = taken
        self.seen: set[int] = set()  # ids of layers already placed (a shared layer keeps its name)

    def inline(self, model: Any, inputs: list[Any], training: bool | None, scope: str) -> Any:
        """`model`'s outputs computed from `inputs` by its own layers, nested models inlined."""
        import tensorflow as tf

        if not is_graph_network(model):  # a Sequential never called on a known shape: a chain
            return self.chain(model, inputs[0], training, scope)
        tensors = {id(x): y for x, y in zip(model.inputs, inputs)}
        by_depth = nodes_by_depth(model)
        for depth in sorted(by_depth, reverse=True):
            for node in by_depth[depth]:
                if node.is_input:
                    continue
                args, kwargs = tf.nest.map_structure(
                    lambda v: tensors.get(id(v), v) if is_symbolic(v) else v, (node.call_args, dict(node.call_kwargs))
                )
                outputs = self.call(node.layer, args, kwargs, training, scope)
                for old, new in zip(tf.nest.flatten(node.outputs), tf.nest.flatten(outputs)):
                    tensors[id(old)] = new
        return tf.nest.pack_sequence_as(model._nested_outputs, [tensors[id(t)] for t in model.outputs])

    def chain(self, model: Any, x: Any, training: bool | None, scope: str) -> Any:
        """A Sequential without a graph: its layers called one after the other."""
        for layer in model.layers:
            x = self.call(layer, (x,), {}, training, scope)
        return x

    def call(self, layer: Any, args: tuple, kwargs: dict, training: bool | None, scope: str) -> Any:
        """Call `layer` (inlining it when it is a model), passing on an enclosing `training` value."""
        import tensorflow as tf

        # An explicit `training` at this call wins, as in Keras; otherwise the enclosing one applies.
        explicit = kwargs.get("training")
        training = explicit if explicit is not None else training
        if is_graph_model(layer) or _is_sequential(layer):
            inner = [t for t in tf.nest.flatten(args[0] if len(args) == 1 else args)]
            return self.inline(layer, inner, training, f"{scope}{layer.name}_")
        if training is not None and getattr(layer, "_expects_training_arg", False):
            kwargs = {**kwargs, "training": training}
        self.place(layer, scope)
        return layer(*args, **kwargs)

    def place(self, layer: Any, scope: str) -> None:
        """Give `layer` a name no other layer of the flat graph has (once per layer object)."""
        if id(layer) in self.seen:
            return
        self.seen.add(id(layer))
        name, count = layer.name, 1
        if name in self.taken:
            name = f"{scope}{layer.name}" if scope and f"{scope}{layer.name}" not in self.taken else name
            while name in self.taken:
                name, count = f"{layer.name}_{count}", count + 1
            rename_layer(layer, name)  # the layer object is shared with the nested model, which is not used again
        self.taken.add(name)


def _is_sequential(layer: Any) -> bool:
    import tf_keras as keras

    return isinstance(layer, keras.Sequential)


def check_same_predictions(original: Any, flat: Any, sample: Any, where: str) -> float:
    """The largest absolute difference of the two models' outputs on `sample`; PipelineError if not tiny."""
    import tensorflow as tf

    if sample is None:
        rng = np.random.default_rng(0)
        sample = [rng.random((4, *t.shape[1:]), np.float32).astype(t.dtype.as_numpy_dtype) for t in original.inputs]
        sample = sample[0] if len(sample) == 1 else sample
    expected = [np.asarray(t) for t in tf.nest.flatten(original(sample, training=False))]
    found = [np.asarray(t) for t in tf.nest.flatten(flat(sample, training=False))]
    scale = max(1.0, *(float(np.abs(e).max()) for e in expected))
    difference = max(float(np.abs(e - f).max()) for e, f in zip(expected, found))
    if not difference <= RELATIVE_TOLERANCE * scale:
        raise PipelineError(
            f"{where}: flattening the nested model into one graph changed its outputs (largest difference "
            f"{difference:.3g}); build the model as one functional graph (call the layers, not sub-models)"
        )
    return difference
