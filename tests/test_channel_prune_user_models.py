"""channel_prune on models built the way users build them (tests/_user_models.py), nested ones flattened first.

Each shape is saved as its builder makes it (blocks as nested models) and handed to the stage, as
a `model=file` recipe would hand it; the layer plan made before any training must say what the
stage then does: which layers lose how many channels, which keep them all and why.
"""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.errors import PipelineError
from pipeline.measure.macs import keras_macs
from pipeline.models.compat import prepared
from pipeline.models.flatten import is_nested
from pipeline.plugin.artifact import ModelArtifact, ModelFormat
from pipeline.run.layer_plan import LayerPlan
from stages.channel_prune import ChannelPruneParams, ChannelPruneStage
from tests import _user_models as users
from tests._tiny import context, digits
from tests._user_models import SHAPES

# Shapes with layers whose channels can go; float_island's one hidden layer feeds a custom layer.
NARROWABLE = [name for name in SHAPES if name not in ("transfer", "float_island")]


@pytest.fixture(scope="module")
def data():
    return digits()


def saved(tmp_path, name, data) -> tuple[ModelArtifact, object]:
    """The shape's model as its builder makes it, saved as a user would save it, and that model."""
    model = getattr(users, name)(data.input_shape, data.num_classes)
    model.save(tmp_path / f"{name}.keras")
    return ModelArtifact(tmp_path / f"{name}.keras", ModelFormat.KERAS, "file"), model


@pytest.mark.parametrize("name", [*NARROWABLE, pytest.param("transfer", marks=pytest.mark.heavy)])
def test_channels_go_inside_nested_blocks_as_the_plan_says(tmp_path, name, data, caplog):
    shape = SHAPES[name]
    artifact, model = saved(tmp_path, name, data)
    stage = ChannelPruneStage(ChannelPruneParams(share=0.5, epochs=1))
    flat = prepared(model, name, data.x_train[:32])
    plan = stage.layer_plan(flat, LayerPlan([]), "stages.cp")
    with caplog.at_level("INFO", logger="test"):
        out = stage.run(artifact, context(tmp_path, "cp", 1, data=data))
    pruned = out.load_keras()

    assert is_nested(model) == shape.nested and not is_nested(pruned)
    kept = out.metadata["kept_channels"]
    assert kept and all(plan.actions[layer].why.endswith(f"-> {count} channels") for layer, count in kept.items())
    output = flat.layers[-1].name
    whole = {layer: action.why for layer, action in plan.actions.items() if action.kind == "whole" and layer != output}
    assert sorted({type(flat.get_layer(layer)).__name__ for layer in whole}) == sorted(shape.channels_whole)
    assert all(f"{layer} ({why})" in caplog.text for layer, why in whole.items())  # named in the log, with the reason
    assert keras_macs(pruned) < 0.6 * keras_macs(flat)
    assert pruned.count_params() == plan.model.count_params()  # later stages planned on this model
    logits = pruned.predict(data.x_val[:8], verbose=0)
    assert logits.shape == (8, data.num_classes) and np.isfinite(logits).all()


def test_a_shared_block_loses_the_same_channels_in_every_call(tmp_path, data):
    artifact, _ = saved(tmp_path, "shared_layer", data)
    out = ChannelPruneStage(ChannelPruneParams(share=0.5, epochs=0)).run(artifact, context(tmp_path, "cp", 1, data=data))
    pruned = out.load_keras()
    assert out.metadata["kept_channels"] == {"shared_conv": 4}
    assert len(pruned.get_layer("shared_conv").inbound_nodes) == 2  # still one layer, called on both inputs


def test_a_model_with_no_channels_to_remove_says_which_layers_need_them(tmp_path, data):
    artifact, model = saved(tmp_path, "float_island", data)
    hidden = model.layers[2].name
    with pytest.raises(PipelineError) as refused:
        ChannelPruneStage(ChannelPruneParams(epochs=0)).run(artifact, context(tmp_path, "cp", 1, data=data))
    message = str(refused.value)
    assert message.startswith(
        f"stages.cp: no layer's channels can be removed: {hidden} (feeds sine (SineFeatures), which channel pruning leaves whole)"
    )
    assert "remove stages.cp from the recipe" in message and "\n" not in message
