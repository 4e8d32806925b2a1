"""The channel_prune stage: a narrower model that still classifies, settings, one-line errors, composition."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.errors import PipelineError
from pipeline.measure.macs import keras_macs
from pipeline.plugin.artifact import Effect
from stages.channel_prune import ChannelPruneParams, ChannelPruneStage
from stages.distill import DistillParams, DistillStage
from techniques.channel_plan import spread
from tests._tiny import accuracy, context


def layer_names(artifact):
    return [layer.name for layer in artifact.load_keras().layers if layer.get_weights()]


def test_half_the_channels_go_and_the_model_still_classifies(tmp_path, trained):
    conv, conv_1, dense, logits = layer_names(trained)
    out = ChannelPruneStage(ChannelPruneParams(share=0.5, epochs=2)).run(trained, context(tmp_path, "channel_prune", 1))
    model, original = out.load_keras(), trained.load_keras()
    assert Effect.CHANNEL_PRUNED in out.effects
    assert out.metadata["kept_channels"] == {conv: 8, conv_1: 16, dense: 32}
    assert model.output_shape == original.output_shape  # the classes stay
    assert keras_macs(model) == pytest.approx(keras_macs(original) / 4, rel=0.05)
    assert model.count_params() < original.count_params() / 3
    assert out.metrics["macs_before"] == keras_macs(original)
    assert 0.8 < out.metrics["val_accuracy"] <= 1
    assert accuracy(out, context(tmp_path, "x").data) > 0.85


def test_shares_per_type_and_name_and_skipped_layers(tmp_path, trained):
    conv, conv_1, dense, _ = layer_names(trained)
    params = ChannelPruneParams(share=0.5, shares={"Conv2D": 0.25, conv_1: 0.75}, skip_layers=[dense], epochs=0)
    out = ChannelPruneStage(params).run(trained, context(tmp_path, "channel_prune", 1))
    assert out.metadata["kept_channels"] == {conv: 12, conv_1: 8}


def test_gradual_steps_reach_the_same_widths(tmp_path, trained, caplog):
    conv, conv_1, dense, _ = layer_names(trained)
    with caplog.at_level("INFO", logger="test"):
        out = ChannelPruneStage(ChannelPruneParams(share=0.5, steps=2, epochs=2)).run(trained, context(tmp_path, "cp", 1))
    widths = [layer.get_weights()[0].shape[-1] for layer in out.load_keras().layers if layer.get_weights()]
    assert widths == [8, 16, 32, 10]
    assert "step 1/2" in caplog.text and "step 2/2" in caplog.text
    assert f"{conv_1}: 32 -> 16 channels" in caplog.text
    assert spread(5, 2) == [2, 3] and spread(1, 3) == [0, 0, 1]


def test_a_macs_target_replaces_the_share(tmp_path, trained):
    out = ChannelPruneStage(ChannelPruneParams(flops_target=0.3, epochs=0)).run(trained, context(tmp_path, "cp", 1))
    ratio = keras_macs(out.load_keras()) / keras_macs(trained.load_keras())
    assert 0.2 < ratio <= 0.3


def test_a_layer_left_with_no_channels_is_one_line(tmp_path, trained):
    conv = layer_names(trained)[0]
    with pytest.raises(PipelineError, match=rf"^stages.cp.shares.{conv}: removing 97% of {conv}'s 16 channels leaves none; ") as error:
        ChannelPruneStage(ChannelPruneParams(shares={conv: 0.97}, epochs=0)).run(trained, context(tmp_path, "cp", 1))
    assert "\n" not in str(error.value)


def test_unknown_names_and_unreachable_targets_are_named(tmp_path, trained):
    with pytest.raises(PipelineError, match=r"^stages.cp.shares: 'conv9' matches no layer name or type; the model has "):
        ChannelPruneStage(ChannelPruneParams(shares={"conv9": 0.5})).run(trained, context(tmp_path, "cp", 1))
    with pytest.raises(PipelineError, match=r"^stages.cp.skip_layers: 'Conv3D' matches no layer"):
        ChannelPruneStage(ChannelPruneParams(skip_layers=["Conv3D"])).run(trained, context(tmp_path, "cp", 1))
    with pytest.raises(PipelineError, match=r"^stages.cp.flops_target: 0.1% of the MACs is out of reach, the fewest this model can keep is 0.3"):
        ChannelPruneStage(ChannelPruneParams(flops_target=0.001, epochs=0)).run(trained, context(tmp_path, "cp", 1))


def test_a_model_called_as_a_layer_is_pruned_inside(tmp_path, trained):
    import tf_keras as keras

    from pipeline.plugin.artifact import ModelArtifact, ModelFormat

    inner = trained.load_keras()
    conv, conv_1, dense, _ = [layer.name for layer in inner.layers if layer.get_weights()]
    inputs = keras.Input(inner.input_shape[1:])
    keras.Model(inputs, inner(inputs)).save(tmp_path / "nested.keras")
    nested = ModelArtifact(tmp_path / "nested.keras", ModelFormat.KERAS, "file")
    out = ChannelPruneStage(ChannelPruneParams(epochs=0)).run(nested, context(tmp_path, "cp", 1))
    assert out.metadata["kept_channels"] == {conv: 8, conv_1: 16, dense: 32}
    assert not any(isinstance(layer, keras.Model) for layer in out.load_keras().layers)


def test_a_subclassed_model_is_refused_in_one_line(tmp_path):
    from pipeline.plugin.artifact import ModelArtifact, ModelFormat
    from tests._user_models import subclassed

    model = subclassed((8, 8, 1), 10)
    model.predict(np.zeros((1, 8, 8, 1), np.float32), verbose=0)  # a subclassed model saves once it has run
    model.save(tmp_path / "subclassed")
    artifact = ModelArtifact(tmp_path / "subclassed", ModelFormat.KERAS, "file")
    with pytest.raises(PipelineError, match=r"^stages.cp: the model is a subclassed Keras model \(no layer graph\); .* keras.Model\(inputs, outputs\)"):
        ChannelPruneStage(ChannelPruneParams(epochs=0)).run(artifact, context(tmp_path, "cp", 1))


def test_distillation_into_the_channel_pruned_model(tmp_path, trained):
    pruned = ChannelPruneStage(ChannelPruneParams(share=0.5, epochs=0)).run(trained, context(tmp_path, "cp", 1))
    out = DistillStage(DistillParams(student="incoming", epochs=3)).run(pruned, context(tmp_path, "distill", 2))
    student = out.load_keras()
    assert student.count_params() == pruned.load_keras().count_params()  # the pruned architecture, trained on
    assert out.metadata["teacher"] == str(trained.path)  # the model before channel pruning teaches
    assert Effect.CHANNEL_PRUNED in out.effects and out.metadata["distilled"] is True
    assert out.metrics["teacher_params"] == trained.load_keras().count_params()
    assert accuracy(out, context(tmp_path, "x").data) > 0.85


def test_an_incoming_student_needs_channel_pruning_before_it_or_a_teacher_file(tmp_path):
    from pipeline.config.recipe import check_recipe
    from stages.qat import QuantizeAwareParams, QuantizeAwareStage
    from tests._runs import compose_config

    cfg = compose_config(tmp_path)
    cfg.stages = {"train": {}, "distill": {"student": "incoming"}}
    with pytest.raises(PipelineError, match=r"^stages.distill.teacher: with student=incoming the teacher is the model before channel pruning"):
        check_recipe(cfg)
    cfg.stages = {"train": {}, "channel_prune": {}, "prune": {}, "distill": {"student": "incoming"}, "quantize": {}}
    plan = check_recipe(cfg)  # magnitude pruning between keeps the model narrow
    cfg.stages = {"train": {}, "channel_prune": {}, "retrain": {"type": "train"}, "distill": {"student": "incoming"}}
    check_recipe(cfg)  # the narrow shape survives plain training
    qat = QuantizeAwareStage(QuantizeAwareParams(scheme="default"))
    assert qat.effects_after(frozenset({Effect.CHANNEL_PRUNED, Effect.PRUNED})) == {Effect.CHANNEL_PRUNED, Effect.QUANTIZE_AWARE}
    assert plan.stages[3].stage.effects_after(frozenset({Effect.CHANNEL_PRUNED, Effect.PRUNED})) == {Effect.CHANNEL_PRUNED, Effect.DISTILLED}
    assert ChannelPruneStage(ChannelPruneParams(epochs=0)).effects_after(frozenset({Effect.PRUNED})) == {
        Effect.PRUNED, Effect.CHANNEL_PRUNED  # without fine-tuning the kept weights keep their zeros
    }
