"""Distillation: the loss against a hand computation, teacher sources, student config, order rules."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.config.recipe import check_recipe
from pipeline.errors import PipelineError
from pipeline.plugin.artifact import Effect
from stages.distill import DistillParams, DistillStage
from techniques.distillation import distillation_loss, pack
from tests._runs import compose_config
from tests._tiny import accuracy, context


def softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@pytest.mark.parametrize("kind", ["kl", "mse"])
def test_loss_matches_a_hand_computation(kind):
    rng = np.random.default_rng(0)
    teacher, student = rng.normal(size=(5, 10)) * 3, rng.normal(size=(5, 10)) * 3
    labels = rng.integers(0, 10, size=5)
    alpha, t = 0.3, 2.5
    ce = -np.log(softmax(student)[np.arange(5), labels])
    if kind == "kl":
        p, q = softmax(teacher / t), softmax(student / t)
        soft = t**2 * (p * (np.log(p) - np.log(q))).sum(axis=-1)
    else:
        soft = ((teacher - student) ** 2).mean(axis=-1)
    expected = alpha * soft + (1 - alpha) * ce
    got = distillation_loss(kind, alpha, t)(pack(labels, teacher.astype(np.float32)), student.astype(np.float32))
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-4)


def test_alpha_one_ignores_labels_and_zero_ignores_teacher():
    teacher = np.array([[5.0, 0.0, 0.0]], np.float32)
    student = np.array([[0.0, 5.0, 0.0]], np.float32)
    label_is_student_pick = pack(np.array([1]), teacher)
    assert float(distillation_loss("kl", 0.0, 3.0)(label_is_student_pick, student)[0]) < 0.02
    assert float(distillation_loss("kl", 1.0, 3.0)(label_is_student_pick, student)[0]) > 1.0


@pytest.fixture
def teacher(trained):
    """The shared trained small CNN, as the model to distil from."""
    return trained


def test_student_learns_from_the_preceding_model(tmp_path, teacher):
    params = DistillParams(student={"name": "small_cnn", "width": 0.25}, epochs=8)
    out = DistillStage(params).run(teacher, context(tmp_path, "distill", 1))
    student = out.load_keras()
    assert student.count_params() < teacher.load_keras().count_params() / 4
    facts = out.metrics
    assert facts["teacher_params"] == teacher.load_keras().count_params()
    assert 0.8 < facts["teacher_accuracy"] <= 1
    assert out.parent is teacher and out.metadata["distilled"] is True and out.effects == {Effect.DISTILLED}
    assert accuracy(out, context(tmp_path, "x").data) > 0.8


def test_teacher_from_a_file_without_a_preceding_stage(tmp_path, teacher):
    params = DistillParams(teacher=str(teacher.path), student={"name": "small_cnn", "width": 0.25}, epochs=1, loss="mse")
    out = DistillStage(params).run(None, context(tmp_path, "distill", 0))
    assert out.metadata["teacher"] == str(teacher.path) and out.parent is None


@pytest.mark.slow
def test_a_teacher_file_ending_in_softmax_is_distilled_from_its_logits(tmp_path, teacher, caplog):
    import tf_keras as keras

    logits_model = teacher.load_keras()
    inputs = keras.Input(logits_model.input_shape[1:])
    keras.Model(inputs, keras.layers.Softmax()(logits_model(inputs))).save(tmp_path / "probabilities.keras")
    # alpha=1: the student learns from the teacher alone, and probabilities taken for logits
    # would soften into nearly uniform targets.
    params = DistillParams(
        teacher=str(tmp_path / "probabilities.keras"), student={"name": "small_cnn", "width": 0.25}, epochs=8, alpha=1.0
    )
    with caplog.at_level("WARNING", logger="pipeline"):
        out = DistillStage(params).run(None, context(tmp_path, "distill", 0))
    assert "probabilities.keras ends in a softmax; distilling from the logits before it" in caplog.text
    assert accuracy(out, context(tmp_path, "x").data) > 0.8


def test_distill_with_no_teacher_fails_at_validation(tmp_path):
    cfg = compose_config(tmp_path)
    cfg.stages = {"distill": {}, "quantize": {}}
    with pytest.raises(PipelineError, match=r"stages.distill.teacher: no teacher: .* set stages.distill.teacher=PATH"):
        check_recipe(cfg)


def test_missing_teacher_file_and_bad_student_are_named(tmp_path):
    cfg = compose_config(tmp_path)
    cfg.stages = {"distill": {"teacher": str(tmp_path / "nope.keras")}}
    with pytest.raises(PipelineError, match=r"stages.distill.teacher: no such file"):
        check_recipe(cfg)
    cfg.stages = {"train": {}, "distill": {"student": {"name": "small_cnn", "widht": 0.5}}}
    with pytest.raises(PipelineError, match=r"stages.distill.student.widht: unknown key; did you mean 'width'"):
        check_recipe(cfg)
    cfg.stages = {"train": {}, "distill": {"student": {"name": "tiny_net"}}}
    with pytest.raises(PipelineError, match=r"stages.distill.student.name: unknown model 'tiny_net'"):
        check_recipe(cfg)


@pytest.mark.slow
def test_pruning_keeps_learning_from_the_distillation_teacher(tmp_path, trained, caplog):
    from stages.prune import PruneParams, PruneStage
    from techniques.pruning import pruned_sparsity

    student = DistillStage(DistillParams(student={"name": "small_cnn", "width": 0.5}, epochs=2)).run(
        trained, context(tmp_path, "distill", 1)
    )
    params = PruneParams(final_sparsity=0.7, epochs=2, teacher_alpha=0.5)
    with caplog.at_level("INFO", logger="test"):
        out = PruneStage(params).run(student, context(tmp_path, "prune", 2))
    assert "fine-tuning on the distillation teacher's outputs (alpha 0.50, T 4.0)" in caplog.text
    assert pruned_sparsity(out.load_keras(), out.metadata["pruned_layers"]) == pytest.approx(0.7, abs=0.02)
    assert out.effects == {Effect.DISTILLED, Effect.PRUNED}
    assert accuracy(out, context(tmp_path, "x").data) > 0.5


def test_pruning_with_a_teacher_needs_a_distilled_model(tmp_path):
    cfg = compose_config(tmp_path)
    cfg.stages = {"train": {}, "prune": {"teacher_alpha": 0.5}, "quantize": {}}
    with pytest.raises(PipelineError, match=r"stages.prune.teacher_alpha: the model reaching stages.prune has no teacher"):
        check_recipe(cfg)
    cfg.stages = {"train": {}, "distill": {}, "prune": {"teacher_alpha": 0.5}, "quantize": {}}
    assert [p.name for p in check_recipe(cfg).stages] == ["train", "distill", "prune", "quantize"]


def test_a_student_that_cannot_take_the_data_fails_before_training(tmp_path):
    # Token ids (n, 40) int32: the recipe's model is an mlp, but the default student is a CNN.
    from pipeline.run.runner import load_data, planned_layers

    rng = np.random.default_rng(0)
    y = np.arange(100) % 5
    np.savez(tmp_path / "tokens.npz", x=rng.integers(0, 1000, (100, 40)).astype(np.int32), y=y)
    overrides = ["recipe=distill_prune_int8", "data=npz", f"data.path={tmp_path / 'tokens.npz'}", "model=mlp"]
    plan = check_recipe(compose_config(tmp_path, *overrides))
    with pytest.raises(PipelineError) as raised:
        planned_layers(plan, load_data(plan))
    assert str(raised.value) == (
        "stages.distill.student.name=small_cnn: needs images shaped (height, width, channels) but the data gives "
        "examples of shape (40,); use stages.distill.student.name=mlp for tabular data")
    plan = check_recipe(compose_config(tmp_path, *overrides, "stages.distill.student.name=mlp"))
    planned_layers(plan, load_data(plan))  # the suggested student fits
