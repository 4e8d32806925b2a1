"""Channel surgery: the smaller model computes exactly what the original does with the removed channels zeroed."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.measure.macs import keras_macs
from techniques.channel_graph import analyse
from techniques.surgery import choose, counted_macs, indices, rebuild, scores


def keras():
    import tf_keras

    return tf_keras


def randomised(model, seed=0):
    """Random biases and BatchNormalization statistics, so that zeroing a channel is never a no-op by accident."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        values = []
        for variable, value in zip(layer.weights, layer.get_weights()):
            name = variable.name.rsplit("/", 1)[-1].split(":")[0]
            if name == "moving_variance":
                value = rng.uniform(0.5, 2.0, value.shape)
            elif name in ("bias", "beta", "moving_mean"):
                value = rng.normal(0, 0.3, value.shape)
            elif name == "gamma":
                value = rng.uniform(0.2, 1.5, value.shape)
            values.append(value.astype(np.float32))
        layer.set_weights(values)
    return model


def halved(model):
    """(graph, kept channels, smaller model) with half of every prunable group's channels removed."""
    graph = analyse(model)
    counts = {root: graph.size[root] // 2 for root in graph.prunable()}
    kept = choose(scores(model, graph), counts)
    return graph, kept, rebuild(model, graph, kept)


def zeroed(model, graph, kept):
    """A copy of `model` whose removed channels output exactly zero: the reference for the surgery."""
    copy = keras().models.clone_model(model)
    copy.set_weights(model.get_weights())
    for layer in copy.layers:
        role = graph.role.get(layer.name)
        if role not in ("producer", "per_channel"):
            continue
        layout = graph.outputs[layer.name]
        width = graph.size and sum(graph.size[g] for g in layout.groups)
        removed = np.setdiff1d(np.arange(width), indices(graph, layout, kept))
        values = []
        for variable, value in zip(layer.weights, layer.get_weights()):
            name = variable.name.rsplit("/", 1)[-1].split(":")[0]
            if name in ("kernel", "pointwise_kernel", "bias", "gamma", "beta"):
                value = value.copy()
                value[..., removed] = 0  # a removed producer channel, or the BN/depthwise output of one
            values.append(value)
        layer.set_weights(values)
    return copy


def outputs_of_every_layer(model, x):
    probe = keras().Model(model.inputs, [layer.output for layer in model.layers[1:]])
    return dict(zip([layer.name for layer in model.layers[1:]], probe(x, training=False)))


def assert_surgery_exact(model, x):
    graph, kept, smaller = halved(model)
    reference = zeroed(model, graph, kept)
    np.testing.assert_allclose(smaller(x, training=False), reference(x, training=False), rtol=1e-4, atol=1e-4)
    full, small = outputs_of_every_layer(reference, x), outputs_of_every_layer(smaller, x)
    checked = 0
    for name, value in small.items():
        layout = graph.outputs.get(name)
        if layout is None:
            continue
        kept_positions = indices(graph, layout, kept)
        np.testing.assert_allclose(value, np.asarray(full[name])[..., kept_positions], rtol=1e-4, atol=1e-4, err_msg=name)
        checked += 1
    assert checked >= 3
    return graph, smaller


@pytest.fixture(scope="module")
def mobilenet():
    from pipeline.models.mobilenet import MobileNetV2, MobileNetV2Params

    return randomised(MobileNetV2(MobileNetV2Params(name="mobilenet_v2", width=0.35)).build((32, 32, 3), 10))


def test_small_cnn_dense_rows_follow_the_flattened_channels():
    from pipeline.models.builtin import ModelParams, SmallCNN

    model = randomised(SmallCNN(ModelParams(name="small_cnn")).build((8, 8, 1), 10))
    graph, smaller = assert_surgery_exact(model, np.random.default_rng(1).random((4, 8, 8, 1), np.float32))
    assert [layer.get_weights()[0].shape for layer in smaller.layers if layer.get_weights()] == [
        (3, 3, 1, 8), (3, 3, 8, 16), (4 * 4 * 16, 32), (32, 10)  # the classes stay
    ]


def test_mlp_hidden_units_go_and_the_classes_stay():
    from pipeline.models.builtin import MLP, MLPParams

    model = randomised(MLP(MLPParams(name="mlp", hidden=[12, 6])).build((5,), 3))
    _, smaller = assert_surgery_exact(model, np.random.default_rng(4).random((4, 5), np.float32))
    assert [layer.get_weights()[0].shape for layer in smaller.layers if layer.get_weights()] == [(5, 6), (6, 3), (3, 3)]


@pytest.mark.slow
def test_mobilenet_v2_residual_and_depthwise_channels_stay_consistent(mobilenet):
    graph, smaller = assert_surgery_exact(mobilenet, np.random.default_rng(2).random((2, 32, 32, 3), np.float32))
    tied = [names for names in graph.prunable().values() if len(names) > 1]
    assert ["block_1_project", "block_2_project"] in tied  # an Add ties a residual stage's projections
    for layer in smaller.layers:
        kind = type(layer).__name__
        if kind == "Add":
            assert len({tuple(t.shape) for t in layer.input}) == 1, layer.name
        if kind == "DepthwiseConv2D":
            assert layer.input.shape[-1] == layer.output.shape[-1] < mobilenet.get_layer(layer.name).output.shape[-1]
    assert smaller.output_shape == (None, 10)
    assert counted_macs(mobilenet, graph, {r: graph.size[r] // 2 for r in graph.prunable()}) == keras_macs(smaller)


def test_concatenated_branches_are_offset_and_other_layers_fixed():
    layers = keras().layers
    inputs = keras().Input((6, 6, 2))
    left = layers.Conv2D(6, 3, padding="same", name="left")(inputs)
    right = layers.SeparableConv2D(4, 3, padding="same", name="right")(inputs)
    joined = layers.BatchNormalization(name="bn")(layers.Concatenate(name="joined")([left, right]))
    body = layers.Conv2D(10, 1, name="body")(joined)
    squeezed = layers.Reshape((1, 1, 10))(layers.GlobalAveragePooling2D()(body))  # squeeze-and-excite
    scaled = layers.Multiply(name="excite")([body, layers.Dense(10, activation="sigmoid", name="gate")(squeezed)])
    normed = layers.LayerNormalization(name="norm")(layers.Conv2D(8, 1, name="mix")(scaled))
    logits = layers.Dense(3, name="logits")(layers.Flatten()(layers.Conv2D(5, 1, name="after")(normed)))
    model = randomised(keras().Model(inputs, logits))
    graph, smaller = assert_surgery_exact(model, np.random.default_rng(3).random((2, 6, 6, 2), np.float32))
    groups = sorted(sorted(names) for names in graph.prunable().values())
    assert groups == [["after"], ["body", "gate"], ["left"], ["right"]]  # Multiply ties the gate to what it scales
    # LayerNormalization mixes channels: what feeds it stays whole; the classes stay.
    assert [(layer.name, layer.output.shape[-1]) for layer in smaller.layers if layer.get_weights()] == [
        ("left", 3), ("right", 2), ("bn", 5), ("body", 5), ("gate", 5), ("mix", 8), ("norm", 8), ("after", 2), ("logits", 3)
    ]


def test_a_layer_called_twice_and_a_softmax_layer_keep_their_channels():
    layers = keras().layers
    inputs = keras().Input((4, 4, 3))
    shared = layers.Conv2D(3, 1, name="shared")
    features = layers.Conv2D(6, 3, name="first")(shared(shared(inputs)))
    pooled = layers.GlobalAveragePooling2D()(features)
    attention = layers.Dense(4, activation="softmax", name="attention")(pooled)  # a softmax over its own units
    model = keras().Model(inputs, layers.Dense(2)(layers.Concatenate()([pooled, attention])))
    graph = analyse(model)
    assert [names for names in graph.prunable().values()] == [["first"]]


def test_layers_reused_from_another_model_count_their_calls_here():
    """A model flattened from nested ones reuses their layers: each has a call there as well as here."""
    layers = keras().layers
    block = keras().Sequential([layers.Conv2D(6, 3, padding="same", name="conv"), layers.BatchNormalization(name="bn")])
    head = layers.Dense(3, name="head")
    inputs = keras().Input((5, 5, 2))
    keras().Model(inputs, head(layers.GlobalAveragePooling2D()(block(inputs))))  # the nested original
    flat_inputs = keras().Input((5, 5, 2))
    x = flat_inputs
    for layer in block.layers:
        x = layer(x)
    flat = randomised(keras().Model(flat_inputs, head(layers.GlobalAveragePooling2D()(x))))
    graph, smaller = assert_surgery_exact(flat, np.random.default_rng(5).random((2, 5, 5, 2), np.float32))
    assert list(graph.prunable().values()) == [["conv"]] and graph.followed_by == {"conv": "bn"}
    assert smaller.get_layer("conv").output.shape[-1] == 3
