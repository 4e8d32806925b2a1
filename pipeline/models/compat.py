"""Does the configured model fit the data? Answered before any training, in one line."""

from __future__ import annotations

import logging
from typing import Any

from pipeline.errors import PipelineError
from pipeline.models.builtin import choice
from pipeline.models.flatten import flatten, is_graph_model
from pipeline.models.hooks import starting_artifact, starting_format
from pipeline.plugin.artifact import ModelFormat
from pipeline.private_api import keras_history

log = logging.getLogger("pipeline")


def build(builder: Any, data: Any, where: str = "model") -> Any:
    """The model of `builder` (configured at `where`) for `data` as every stage gets it: one flat graph that outputs logits."""
    return prepared(builder.build(data.input_shape, data.num_classes), model_origin(builder, where), data.x_train[:32])


def prepared(model: Any, where: str, sample: Any = None) -> Any:
    """`model` with nested models flattened into one graph (checked on `sample`) and a final softmax removed.

    Flattening comes first, so that a softmax at the end of a nested head is found too.
    """
    return without_softmax(flatten(model, sample, where))


def check_compatible(builder: Any, data: Any, where: str = "model") -> Any:
    """The model as the stages will get it, or PipelineError when it cannot take `data`'s examples or classes.

    `where` is the config key of the model: `model` for the recipe's, or a stage's own model
    (`stages.distill.student`), so that every message names the key to change.

    Built-in architectures state their needs in `check` (no model is built for that); every model
    is then built once (or, for one the recipe starts from as a file, loaded for inference) and
    its actual input and output shapes compared with the data, which covers user files and
    builders that ignore the shape they are given.
    """
    origin = model_origin(builder, where)
    if data.num_classes < 2 and data.task == "classification":
        raise PipelineError(f"data: only {data.num_classes} class found; classification needs at least two")
    check = getattr(builder, "check", None)
    if check is not None:
        check(data.input_shape, data.num_classes, where)
    if starting_format(builder) is ModelFormat.SAVED_MODEL:
        start = starting_artifact(builder)
        assert start is not None  # a SavedModel start is always a file
        model = start.load_model()  # a signature: its shapes, no Keras model
    else:
        model = builder.build(data.input_shape, data.num_classes)
    declared, outputs = shapes(model, data, origin)
    expected = tuple(declared[1:]) if isinstance(declared, tuple) else None
    if expected is None or not shapes_match(expected, data.input_shape):
        raise PipelineError(
            f"{origin} takes inputs of shape {plain(expected or declared)} but the data gives "
            f"{plain(data.input_shape)}; use data of that shape (data.image_size, data.color_mode for "
            "image_folder) or a model for this data"
        )
    if not isinstance(outputs, tuple) or len(outputs) != 2 or outputs[-1] != data.num_classes:
        wanted = {"regression": "1 value", "multilabel": f"{data.num_classes} labels"}.get(data.task, f"{data.num_classes} classes")
        raise PipelineError(
            f"{origin} outputs {plain(outputs)} but the data has {wanted}; "
            f"give the model a final Dense({data.num_classes}) layer with no activation"
        )
    model = prepared(model, origin, data.x_train[:32])
    if getattr(model, "softmax_removed", False):
        log.warning(
            "%s ends in a softmax; the stages train on the logits before it, and the exported model "
            "outputs those logits (the same top class)", origin,
        )
    return model


def shapes(model: Any, data: Any, origin: str) -> tuple[Any, Any]:
    """The model's input and output shapes; a subclassed model (which declares none) is called on the data."""
    import tf_keras as keras

    if is_graph_model(model) or not isinstance(model, keras.Model):  # a graph, or a SavedModel's signature
        return model.input_shape, model.output_shape
    try:
        outputs = model(data.x_train[:2], training=False)
    except Exception as error:  # noqa: BLE001 - a user's call() may raise anything on the wrong input
        reason = " ".join(str(error).split())[:200]
        raise PipelineError(f"{origin} cannot take the data's examples of shape {plain(data.input_shape)} ({reason})") from None
    return (None, *data.input_shape), (None, *outputs.shape[1:])


def without_softmax(model: Any) -> Any:
    """`model` with a final softmax removed, marked `softmax_removed`; other models unchanged.

    Every loss here (cross-entropy from logits, distillation's softened outputs) takes logits;
    probabilities in their place train badly and distil to nearly uniform targets. Softmax keeps
    the order of the outputs, so the predicted class and the accuracy stay the same.
    """
    import tf_keras as keras

    if not is_graph_model(model) or len(model.outputs) != 1:
        return model  # a subclassed model's last layer need not be its last step
    # The layer making the output, and its call in this model's graph: a flattened model's layers
    # also belong to the graph they were flattened from, so `last.input` could be another graph's.
    last, node_index, _ = keras_history(model.outputs[0])
    if isinstance(last, keras.layers.Softmax) or (
        isinstance(last, keras.layers.Activation) and last.activation is keras.activations.softmax
    ):
        model = keras.Model(model.inputs, last.inbound_nodes[node_index].input_tensors, name=model.name)
    elif getattr(last, "activation", None) is keras.activations.softmax:
        last.activation = keras.activations.linear
    else:
        return model
    model.softmax_removed = True
    return model


def shapes_match(model_shape: tuple, data_shape: tuple[int, ...]) -> bool:
    """Same rank, and every fixed size of the model equals the data's (None takes any)."""
    return len(model_shape) == len(data_shape) and all(m in (None, d) for m, d in zip(model_shape, data_shape))


def model_origin(builder: Any, where: str = "model") -> str:
    """The config key a user would change: `where`.path, `where`.target or the architecture's name."""
    config = builder.config
    if getattr(config, "path", None):
        return f"{where}.path: {config.path}"
    if getattr(config, "target", None):
        return f"{where}.target: {config.target}"
    return choice(where, config.name)


def plain(shape: Any) -> str:
    """(None, 28, 28, 1) -> (28, 28, 1) without the batch axis when there is one."""
    if isinstance(shape, tuple) and shape and shape[0] is None:
        shape = shape[1:]
    return str(tuple(shape)) if isinstance(shape, tuple) else str(shape)
