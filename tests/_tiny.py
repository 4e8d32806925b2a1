"""Tiny real models for stage tests: a digits CNN trained for a few epochs, and stage contexts."""

from __future__ import annotations

import logging
from pathlib import Path

from pipeline.config.recipe import configure
from pipeline.plugin import registry
from pipeline.plugin.stage import StageContext


def digits():
    """The default digits splits (seed 0)."""
    return configure(registry.DATA, {"name": "digits"}, "data").load(seed=0)


def context(tmp_path: Path, name: str, index: int = 0, data=None, width: float = 1.0, build=None) -> StageContext:
    """A StageContext for stage `name` under `tmp_path`, building a small CNN of `width` (or calling `build(data)`)."""
    data = data if data is not None else digits()
    builder = configure(registry.MODELS, {"name": "small_cnn", "width": width}, "model")
    workdir = tmp_path / "stages" / f"{index}_{name}"
    workdir.mkdir(parents=True, exist_ok=True)
    return StageContext(
        name=name, index=index, workdir=workdir, run_dir=tmp_path, seed=0, data=data,
        build_model=(lambda: build(data)) if build else lambda: builder.build(data.input_shape, data.num_classes),
        log=logging.getLogger("test"),
    )


def accuracy(artifact, data) -> float:
    """Test accuracy of a Keras or TFLite artifact (no latency runs), on the inputs it takes (raw or preprocessed)."""
    import numpy as np

    from pipeline.measure import litert
    from pipeline.plugin.artifact import ModelFormat

    x = data.test_inputs(raw=artifact.takes_raw_inputs)
    if artifact.format is ModelFormat.TFLITE:
        logits = litert.predict(artifact.path, x)
    else:
        logits = artifact.load_keras().predict(x, verbose=0)
    return float(np.mean(np.argmax(logits, -1) == data.y_test))


def standardized_cnn(data):
    """A small CNN that standardises each pixel inside the model (a Keras Normalization layer adapted
    on the training images), untrained.

    Full-integer int8 ruins it: border pixels that never vary have zero deviation, which the layer
    turns into a multiplier of 1/epsilon, and int8 stores all per-pixel multipliers with one scale
    for the tensor, rounding the informative pixels' multipliers to zero.
    """
    import tf_keras as keras

    layers = keras.layers
    normalization = layers.Normalization(axis=(1, 2, 3), name="normalization")
    normalization.adapt(data.x_train)
    inputs = keras.Input(data.input_shape)
    x = normalization(inputs)
    x = layers.Conv2D(16, 3, padding="same", activation="relu", name="conv")(x)
    x = layers.MaxPooling2D(name="pool")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(32, activation="relu", name="hidden")(x)
    return keras.Model(inputs, layers.Dense(data.num_classes, name="logits")(x), name="standardized_cnn")


def trained_standardized(tmp_path: Path):
    """`standardized_cnn` trained on digits for 10 epochs, saved as a train stage's artifact: int8 ruins it."""
    from stages.train import TrainParams
    from techniques.training import compile_model, fit, save_keras

    ctx = context(tmp_path, "train")
    model, params = standardized_cnn(ctx.data), TrainParams(epochs=10)
    compile_model(model, params)
    fit(model, params, ctx.data, ctx.device, seed=ctx.seed + ctx.index, log=ctx.log, name=ctx.name)
    return save_keras(model, None, ctx.workdir, ctx.name, ctx.log, effects=frozenset())


def op_types(path, layer_names) -> dict[str, list[tuple[str, str, list[str]]]]:
    """Layer -> (op, output type, weight types) of each of its ops in the file, read from the flatbuffer."""
    from pipeline.private_api import tflite_operator_names
    from techniques import mixed_precision as mixed
    from techniques import quant_debug as debug

    model, subgraph = debug.graph(path.read_bytes())
    codes = tflite_operator_names()
    found: dict[str, list[tuple[str, str, list[str]]]] = {}
    for op, layer in zip(subgraph.operators, debug.operator_layers(model, subgraph, layer_names, main=True)):
        name = debug.operator_name(model, op, codes)
        if layer is None or name in mixed.CONVERSIONS:
            continue
        weights = [mixed.TENSOR_TYPES[t.type] for t in mixed.weight_tensors(model, subgraph, op)] if name in mixed.WEIGHT_OPS else []
        found.setdefault(layer, []).append((name, mixed.TENSOR_TYPES[subgraph.tensors[op.outputs[0]].type], weights))
    return found
