"""The private APIs the pipeline relies on still exist and still do their job on the installed versions."""

from __future__ import annotations

import numpy as np
import pytest
import tf_keras as keras

from pipeline import private_api


def small_model():
    inputs = keras.Input((8, 8, 1))
    features = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    outputs = keras.layers.Dense(3, name="head")(keras.layers.Flatten(name="flat")(features))
    return keras.Model(inputs, outputs)


def test_versions_other_than_the_checked_ones_are_named(monkeypatch):
    from importlib import metadata

    installed = ".".join(metadata.version("tensorflow").split(".")[:2])
    monkeypatch.setattr(private_api, "CHECKED", {"tensorflow": installed, "not-installed-anywhere": "1.0"})
    assert private_api.untested_versions() == []
    monkeypatch.setattr(private_api, "CHECKED", {"tensorflow": "0.1"})
    assert private_api.untested_versions() == [f"tensorflow {metadata.version('tensorflow')} (checked: 0.1)"]


def test_graph_helpers_read_a_functional_model():
    model = small_model()
    assert private_api.is_graph_network(model)
    assert private_api.producing_layer(model.outputs[0]).name == "head"
    assert private_api.keras_history(model.outputs[0])[1:] == (0, 0)  # the first call, its only output
    assert private_api.is_symbolic(model.outputs[0]) and not private_api.is_symbolic(np.zeros(1))
    private_api.rename_layer(model.get_layer("flat"), "flatten_renamed")
    assert model.get_layer("flatten_renamed").name == "flatten_renamed"
    by_depth = private_api.nodes_by_depth(model)
    assert {node.layer.name for nodes in by_depth.values() for node in nodes} == {layer.name for layer in model.layers}
    assert [node.layer.name for node in by_depth[0]] == ["head"]  # depth 0: the outputs


def test_registries_answer_per_layer():
    import tensorflow_model_optimization as tfmot

    model = small_model()
    assert private_api.prunable(model.get_layer("conv")) and not private_api.prunable(model.get_layer("flat"))
    assert private_api.clusterable(model.get_layer("head")) and not private_api.clusterable(model.get_layer("flat"))
    wrapped = private_api.cluster_weights(
        model.get_layer("conv"), number_of_clusters=2, cluster_centroids_init=tfmot.clustering.keras.CentroidInitialization.KMEANS_PLUS_PLUS, cluster_per_channel=True
    )
    assert type(wrapped).__name__ == "ClusterWeights"
    assert type(private_api.quantize_scheme("pcqat")).__name__ == "Default8BitClusterPreserveQuantizeScheme"
    assert {type(private_api.quantize_scheme(name).get_quantize_registry()).__name__ for name in ("default", "pqat", "cqat")}
    registry = private_api.default_8bit_registry()
    assert registry.supports(model.get_layer("conv")) and not registry.supports(keras.layers.LayerNormalization())
    # What int4 quantization-aware training builds on: the default config's class, and the prune-preserving
    # weight quantizer at 4 bits.
    assert type(registry.get_quantize_config(model.get_layer("head"))) is private_api.default_8bit_config_class()
    quantizer = private_api.prune_preserving_quantizer(num_bits=4, per_axis=True, symmetric=True, narrow_range=True)
    assert (quantizer.num_bits, quantizer.per_axis, quantizer.narrow_range) == (4, True, True)


def test_tflite_reader_and_frozen_functions(tmp_path):
    import tensorflow as tf

    model = small_model()
    function = tf.function(model).get_concrete_function(tf.TensorSpec((1, 8, 8, 1), tf.float32))
    frozen = private_api.frozen_function(function)
    assert not frozen.variables
    x = np.ones((1, 8, 8, 1), np.float32)
    assert np.allclose(frozen(tf.constant(x))[0], model(x), atol=1e-6)
    path = tmp_path / "m.tflite"
    path.write_bytes(tf.lite.TFLiteConverter.from_concrete_functions([frozen]).convert())
    names = private_api.tflite_operator_names()
    codes = {names[max(c.builtinCode, c.deprecatedBuiltinCode)] for c in private_api.read_tflite(str(path)).operatorCodes}
    assert {"CONV_2D", "FULLY_CONNECTED"} <= codes
    assert len(private_api.tflite_from_bytes(path.read_bytes()).subgraphs) == 1


def test_quantizer_ranges_are_the_global_min_and_max():
    from ai_edge_quantizer import recipe

    from techniques.conversion import convert
    from techniques.mixed_precision import signature_samples

    model = small_model()
    x = np.random.default_rng(0).normal(size=(20, 8, 8, 1)).astype(np.float32)
    flatbuffer = convert(model, "none", x, sparse=False)
    ranges = private_api.min_max_ranges(flatbuffer, recipe.static_wi8_ai8(), signature_samples(flatbuffer, x))
    logits = model.predict(x, verbose=0)
    output = next(value for name, value in ranges.items() if name.startswith("StatefulPartitionedCall"))
    assert float(np.min(output["min"])) == pytest.approx(float(logits.min()), rel=1e-4)
    assert float(np.max(output["max"])) == pytest.approx(float(logits.max()), rel=1e-4)


def test_safe_mode_scope_and_hydra_parser():
    with private_api.safe_mode_scope(True):
        pass
    args = private_api.hydra_argument_parser().parse_args(["-m", "recipe=x"])
    assert args.multirun and args.overrides == ["recipe=x"]
