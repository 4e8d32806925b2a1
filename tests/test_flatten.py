"""Nested models become one flat graph of the same layers, with the same predictions."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.errors import PipelineError
from pipeline.models.compat import prepared
from pipeline.models.flatten import check_same_predictions, flatten, is_nested
from tests import _user_models as users
from tests._user_models import SHAPES

X = np.random.default_rng(0).random((8, 8, 8, 1), np.float32)
NESTED = [name for name, shape in SHAPES.items() if shape.nested]


def build(name, **kwargs):
    return getattr(users, name)((8, 8, 1), 10, **kwargs)


# The transfer model (a MobileNetV2 base) takes most of this test's time: it runs with the slow tier.
@pytest.mark.parametrize("name", [pytest.param(name, marks=pytest.mark.slow) if name == "transfer" else name for name in NESTED])
def test_nested_models_become_one_graph_of_the_same_layers(tmp_path, name):
    import tf_keras as keras

    model = build(name)
    flat = flatten(model, X)
    assert is_nested(model) and not is_nested(flat)
    assert {id(w) for w in flat.weights} == {id(w) for w in model.weights}  # the same variables: nothing copied
    assert len({layer.name for layer in flat.layers}) == len(flat.layers)
    expected = model(X, training=False).numpy()
    np.testing.assert_array_equal(flat(X, training=False).numpy(), expected)
    flat.save(tmp_path / "flat.keras")  # what the stages hand on and export
    reloaded = keras.models.load_model(tmp_path / "flat.keras", compile=False)
    np.testing.assert_allclose(reloaded(X, training=False).numpy(), expected, atol=1e-6)


def test_flat_and_subclassed_models_are_returned_as_they_are():
    for name in ("layer_norm", "subclassed"):
        model = build(name)
        assert flatten(model, X) is model


@pytest.mark.slow
def test_training_false_at_the_call_keeps_a_base_in_inference_mode(tmp_path):
    import tf_keras as keras

    def statistics_move(model):
        bn = model.get_layer("bn_Conv1")
        before = bn.moving_mean.numpy().copy()
        model(X, training=True)  # a training step's forward pass
        return not np.array_equal(bn.moving_mean.numpy(), before)

    frozen = flatten(build("transfer", frozen_statistics=True), X)
    frozen.save(tmp_path / "frozen.keras")
    assert not statistics_move(frozen)
    assert not statistics_move(keras.models.load_model(tmp_path / "frozen.keras", compile=False))
    assert statistics_move(flatten(build("transfer", frozen_statistics=False), X))


def test_clashing_names_get_their_block_name_and_shared_layers_stay_shared():
    names = [layer.name for layer in flatten(build("branches"), X).layers]
    assert {"left", "right", "skip", "block_b_left", "block_b_right", "block_b_skip"} <= set(names)
    model = build("shared_layer")
    flat = flatten(model, X)
    assert [layer.name for layer in flat.layers].count("shared_conv") == 1 and flat.count_params() == model.count_params()
    (conv,) = [layer for layer in flat.get_config()["layers"] if layer["name"] == "shared_conv"]
    assert len(conv["inbound_nodes"]) == 2  # one layer, called on the image and on the blurred image


@pytest.mark.parametrize("softmax_layer", [False, True])
def test_a_softmax_at_the_end_of_a_nested_head_is_removed(softmax_layer):
    model = build("softmax_head", softmax_layer=softmax_layer)
    probabilities = model(X, training=False).numpy()
    logits = prepared(model, "model.target: tests._user_models:softmax_head", X)
    assert logits.softmax_removed
    found = logits(X, training=False).numpy()
    np.testing.assert_allclose(np.exp(found) / np.exp(found).sum(axis=1, keepdims=True), probabilities, atol=1e-5)


def test_models_that_disagree_fail_in_one_line():
    with pytest.raises(PipelineError, match=r"^model.path: m.keras: flattening the nested model into one graph changed its "
                                            r"outputs \(largest difference .*\); build the model as one functional graph"):
        check_same_predictions(build("layer_norm"), build("layer_norm"), X, "model.path: m.keras")
