"""Per-layer sensitivity, the sparsity plan made from it, and per-layer sparsity targets in prune."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.config.recipe import RecipeStage, check_recipe
from pipeline.errors import PipelineError
from pipeline.measure.metrics import validation_accuracy
from pipeline.models.compat import prepared
from pipeline.plugin.artifact import Effect
from pipeline.run.budget import Ledger
from pipeline.run.layer_plan import Action, LayerPlan
from pipeline.run.runner import StageOutcome, account
from stages.prune import PruneParams, PruneStage
from stages.sensitivity import SensitivityParams, SensitivityStage
from stages.train import TrainParams, TrainStage
from techniques.layers import acted_on
from techniques.pruning import magnitude_pruned, pruned_sparsity
from techniques.sparsity_plan import LayerSensitivity, plan
from tests._runs import compose_config
from tests._tiny import context
from tests._user_models import nested_blocks


def layer(name, size, drops, base=0.9):
    """A layer whose accuracy falls by `drops` at sparsities 0.5, 0.8, 0.9."""
    return LayerSensitivity(name, "Dense", size, {s: base - d for s, d in zip((0.5, 0.8, 0.9), drops)})


def test_the_plan_reaches_the_target_exactly_and_prunes_tolerant_layers_harder():
    layers = [layer("fragile", 1000, (0.01, 0.2, 0.4)), layer("tolerant", 1000, (0.0, 0.0, 0.01))]
    shares = plan(layers, 0.9, 0.7)
    assert shares["tolerant"] > shares["fragile"]
    assert (1000 * shares["fragile"] + 1000 * shares["tolerant"]) / 2000 == pytest.approx(0.7, abs=1e-4)


def test_among_equally_tolerant_layers_the_larger_is_pruned_first():
    shares = plan([layer("small", 100, (0, 0, 0)), layer("big", 10_000, (0, 0, 0))], 0.9, 0.5)
    assert shares["big"] > 0.5 > shares["small"]


def test_noisy_gains_do_not_make_a_layer_look_free():
    # Accuracy that rises at 80% (noise) does not undo the cost measured at 50%.
    noisy = LayerSensitivity("noisy", "Dense", 1000, {0.5: 0.85, 0.8: 0.95, 0.9: 0.5})
    steady = layer("steady", 1000, (0.01, 0.02, 0.03))
    assert plan([noisy, steady], 0.9, 0.45)["steady"] >= 0.8


def test_a_target_above_the_measured_sparsities_is_refused():
    with pytest.raises(ValueError, match="above the highest sparsity measured"):
        plan([layer("a", 10, (0, 0, 0))], 0.9, 0.95)
    with pytest.raises(ValueError, match="target_sparsity 0.95 is above the highest of sparsities"):
        SensitivityParams(sparsities=[0.5, 0.9], target_sparsity=0.95)


def test_magnitude_pruning_zeroes_the_smallest_weights():
    kernel = np.array([[0.1, -3.0], [0.5, -0.2]], dtype=np.float32)
    pruned = magnitude_pruned(kernel, 0.5)
    assert np.array_equal(pruned, [[0.0, -3.0], [0.5, 0.0]]) and kernel[0, 0] == 0.1  # the input is kept


@pytest.fixture(scope="module")
def measured(trained, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("sensitivity")
    return SensitivityStage(SensitivityParams(target_sparsity=0.85, sparsities=[0.5, 0.8, 0.9])).run(
        trained, context(tmp_path, "sensitivity", 1)
    )


def kernel_sizes(model):
    return {layer.name: layer.kernel.shape.num_elements() for layer in model.layers if hasattr(layer, "kernel")}


def test_sensitivity_writes_a_table_a_plot_and_a_plan_that_reaches_the_target(trained, measured):
    assert measured.path.read_bytes() == trained.path.read_bytes()  # the model is handed on unchanged
    folder = measured.path.parent
    table = (folder / "sensitivity.md").read_text()
    sizes = kernel_sizes(trained.load_keras())
    assert all(f"| {name} |" in table for name in sizes) and "int8 error" in table and "acc @90%" in table
    assert (folder / "sensitivity.png").read_bytes().startswith(b"\x89PNG")
    shares = json.loads((folder / "sparsity_plan.json").read_text())["layers"]
    assert shares == measured.metadata["sparsity_plan"] and set(shares) == set(sizes)
    overall = sum(sizes[n] * s for n, s in shares.items()) / sum(sizes.values())
    assert overall == pytest.approx(0.85, abs=1e-3)
    assert measured.reports == ("sensitivity.md", "sensitivity.png", "sparsity_plan.json")
    assert 0 < measured.metrics["base_val_accuracy"] <= 1 and Effect.SPARSITY_PLANNED in measured.effects


def test_prune_follows_the_plan_layer_by_layer(tmp_path, measured):
    pruned = PruneStage(PruneParams(final_sparsity="plan", epochs=2)).run(measured, context(tmp_path, "prune", 2))
    model = pruned.load_keras()
    shares = {n: s for n, s in measured.metadata["sparsity_plan"].items() if s > 0}
    assert pruned.metadata["layer_sparsity"] == shares
    for name, share in shares.items():
        assert pruned_sparsity(model, [name]) == pytest.approx(share, abs=0.02)
    sizes = kernel_sizes(model)
    zeros = sum(pruned_sparsity(model, [name]) * size for name, size in sizes.items())
    assert zeros / sum(sizes.values()) == pytest.approx(0.85, abs=0.02)


def test_planned_pruning_that_misses_the_budget_stops_the_run_in_one_line(tmp_path, measured):
    stage = PruneStage(PruneParams(final_sparsity="plan", epochs=1))
    ctx = context(tmp_path, "prune", 2)
    pruned = stage.run(measured, ctx)
    ledger = Ledger(0.0)  # not one example of validation accuracy may be lost against a perfect reference
    ledger.record("train", 1.0)
    accuracy = validation_accuracy(pruned, ctx.data)  # what the runner measured after the stage
    assert accuracy < 1.0
    outcome = StageOutcome(pruned, {"val_accuracy": accuracy}, 1.0, cached=False)
    with pytest.raises(PipelineError, match=r"^stages.prune.final_sparsity: the planned 85.0% sparsity leaves validation accuracy .* below the budget's floor 1.0000; lower stages.sensitivity.target_sparsity"):
        account(ledger, RecipeStage("prune", "prune", stage), outcome)
    ledger = Ledger(1.0)
    ledger.record("train", 1.0)
    assert account(ledger, RecipeStage("prune", "prune", stage), outcome).metrics["budget_spent"] == pytest.approx(1 - accuracy)


def test_prune_takes_targets_by_layer_type_and_name(tmp_path, trained):
    names = [layer.name for layer in trained.load_keras().layers if hasattr(layer, "kernel")]
    target = {"default": 0.7, "Conv2D": 0.3, names[-1]: 0.0}  # a name beats a type, which beats the default
    pruned = PruneStage(PruneParams(final_sparsity=target, epochs=2)).run(trained, context(tmp_path, "prune", 1))
    model = pruned.load_keras()
    assert pruned_sparsity(model, [names[0]]) == pytest.approx(0.3, abs=0.02)  # a Conv2D
    assert pruned_sparsity(model, [names[2]]) == pytest.approx(0.7, abs=0.02)  # a Dense, by default
    assert pruned_sparsity(model, [names[-1]]) == 0.0 and names[-1] not in pruned.metadata["pruned_layers"]


def test_a_target_naming_no_layer_fails_in_one_line(tmp_path, trained):
    with pytest.raises(PipelineError, match=r"^stages.prune.final_sparsity: 'Conv3D' matches no layer name or type; the model has"):
        PruneStage(PruneParams(final_sparsity={"Conv3D": 0.5})).run(trained, context(tmp_path, "prune", 1))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["stages.prune.final_sparsity=plan"], r"^stages.prune.final_sparsity: 'plan' takes the per-layer plan of a sensitivity stage, but none comes before"),
        (["stages.prune.final_sparsity={default: 0.8, Conv2D: 1.2}"], r"^stages.prune.final_sparsity: 'Conv2D': expected less than 1"),
        (["stages.prune.final_sparsity={Conv2D: 0.5}", "stages.prune.m_by_n=[2,4]"], r"final_sparsity must be 0.5 with m_by_n"),
        (["stages.prune.final_sparsity={default: 0.3}", "stages.prune.initial_sparsity=0.5"], r"initial_sparsity must not exceed final_sparsity"),
    ],
)
def test_per_layer_targets_are_checked_before_any_work(tmp_path, overrides, message):
    with pytest.raises(PipelineError, match=message):
        check_recipe(compose_config(tmp_path, *overrides))


def test_a_mapping_and_a_plan_validate(tmp_path):
    assert check_recipe(compose_config(tmp_path, "stages.prune.final_sparsity={default: 0.8, Conv2D: 0.5}"))
    assert check_recipe(compose_config(tmp_path, "recipe=smallest_within_1pt"))


@pytest.mark.slow
def test_a_nested_user_model_is_measured_and_pruned_layer_by_layer_inside_its_blocks(tmp_path):
    def build(data):  # as the runner builds a user's model: its Sequential blocks flattened into one graph
        return prepared(nested_blocks(data.input_shape, data.num_classes), "model", data.x_train[:32])

    trained = TrainStage(TrainParams(epochs=2)).run(None, context(tmp_path, "train", build=build))
    keras_model = trained.load_keras()
    convs = [layer.name for layer in keras_model.layers if type(layer).__name__ == "Conv2D"]
    assert len(convs) == 2  # the `features` block's convolutions, now layers of the flat graph

    plan = PruneStage(PruneParams(final_sparsity={"default": 0.8, "Conv2D": 0.5})).layer_plan(keras_model, LayerPlan([]), "stages.prune")
    assert all(plan.actions[name] == Action("pruned", "50%") for name in convs)
    params = SensitivityParams(target_sparsity=0.7, sparsities=[0.5, 0.8, 0.9], max_examples=100)
    assert set(acted_on(SensitivityStage(params).layer_plan(keras_model, LayerPlan([]), "stages.s").actions, "measured")) >= set(convs)

    measured = SensitivityStage(params).run(trained, context(tmp_path, "sensitivity", 1))
    table = (measured.path.parent / "sensitivity.md").read_text()
    assert all(f"| {name} |" in table for name in convs) and "int8 error" in table
    shares = measured.metadata["sparsity_plan"]
    pruned = PruneStage(PruneParams(final_sparsity="plan", epochs=2)).run(measured, context(tmp_path, "prune", 2))
    model = pruned.load_keras()
    assert set(convs) <= set(shares) and pruned.metadata["layer_sparsity"] == {n: s for n, s in shares.items() if s > 0}
    for name, share in shares.items():
        assert pruned_sparsity(model, [name]) == pytest.approx(share, abs=0.02)
