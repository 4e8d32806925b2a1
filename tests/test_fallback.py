"""Float fallback: a full-integer model that misses the accuracy budget keeps its worst layers float."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest

from pipeline.errors import PipelineError
from pipeline.measure import litert
from pipeline.measure.metrics import validation_accuracy
from pipeline.plugin.artifact import ModelArtifact, ModelFormat
from pipeline.run.budget import Budget
from stages.qat import QuantizeAwareParams, QuantizeAwareStage
from stages.quantize import QuantizeParams, QuantizeStage
from techniques import quant_debug as debug
from techniques.conversion import CALIBRATION_SAMPLES, calibration_set
from techniques.fallback import float_kept, search
from techniques.gates import float_operators, integer_gate
from techniques.qat import quantize_aware
from tests._tiny import context, trained_standardized


@pytest.fixture(scope="module")
def standardized(tmp_path_factory):
    """The per-pixel standardising CNN trained on digits: int8 ruins it."""
    return trained_standardized(tmp_path_factory.mktemp("standardized"))


def with_budget(ctx, reference: float, drop: float):
    """`ctx` as the runner makes it when a budget of `drop` below `reference` is left whole."""
    return dataclasses.replace(ctx, budget=Budget(reference, "train", drop, reference))


def quantize(model, tmp_path, budget_drop=None, **params):
    ctx = context(tmp_path, "quantize", 1)
    if budget_drop is not None:
        ctx = with_budget(ctx, validation_accuracy(model, ctx.data), budget_drop)
    return QuantizeStage(QuantizeParams(mode="int8", **params)).run(model, ctx)


def test_each_layer_gets_its_own_int8_error_and_the_hostile_one_ranks_first(tmp_path, standardized):
    ctx = context(tmp_path, "x")
    keras_model = standardized.load_keras()
    calibrated = debug.calibrate(keras_model, calibration_set(ctx.data.x_train, CALIBRATION_SAMPLES, ctx.seed))
    nodes = debug.layer_nodes(debug.quantize(calibrated), debug.keras_layer_names(keras_model))
    assert {"normalization", "conv", "hidden", "logits"} <= set(nodes)  # the last op is found by its weights
    errors = debug.layer_errors(calibrated, [], nodes, ctx.data.x_val[:64])
    assert max(errors, key=errors.get) == "normalization"
    assert errors["normalization"] > 0.5 and errors["hidden"] < 0.1, errors
    # Once the hostile layer is float, it is no longer ranked and the others' errors stay small.
    after = debug.layer_errors(calibrated, nodes["normalization"], {k: v for k, v in nodes.items() if k != "normalization"}, ctx.data.x_val[:64])
    assert "normalization" not in after and max(after.values()) < 0.2, after


def test_fallback_keeps_the_hostile_layer_float_and_meets_the_budget(tmp_path, standardized):
    data = context(tmp_path, "x").data
    plain = quantize(standardized, tmp_path / "plain")
    assert validation_accuracy(plain, data) < 0.3 < validation_accuracy(standardized, data) - 0.5  # int8 ruins it

    out = quantize(standardized, tmp_path / "fallback", budget_drop=0.02, fallback="auto", accuracy_tolerance=0.05)
    assert out.metadata["fallback"]["float_layers"] == ["normalization"]
    assert out.metadata["float_layers"] == ["normalization (Normalization)"]  # read from the file
    floor = validation_accuracy(standardized, data) - 0.02
    assert validation_accuracy(out, data) >= floor
    # The accuracy gate compares the accuracies the fallback took, which are those of these models.
    assert out.gate["tflite_accuracy"] == out.metrics["fallback_val_accuracy"] == pytest.approx(validation_accuracy(out, data))
    assert out.gate["keras_accuracy"] == pytest.approx(validation_accuracy(standardized, data))
    assert out.path.stat().st_size <= 1.5 * plain.path.stat().st_size
    search = out.metadata["fallback"]
    assert search["split"] == "validation" and search["floor"] == pytest.approx(floor)
    assert [step["layer"] for step in search["steps"]] == ["normalization"]
    assert out.metrics["fallback_size_cost_bytes"] == out.path.stat().st_size - plain.path.stat().st_size
    report = (tmp_path / "fallback" / "stages" / "1_quantize" / "fallback.md").read_text()
    assert "| normalization |" in report and out.reports == ("fallback.md",)
    # int8 in and out, float only where the budget chose it; require_integer=auto accepts that.
    runner = litert.interpreter(out.path, threads=1)
    assert runner.get_input_details()[0]["dtype"] == np.int8 and runner.get_output_details()[0]["dtype"] == np.int8
    assert out.metadata["fully_integer"] is False and "DEQUANTIZE" in float_operators(out.path)


def test_require_integer_true_names_the_layers_the_budget_kept_float(tmp_path, standardized):
    with pytest.raises(PipelineError, match=r"^stages.quantize.require_integer: layers normalization stay float by the accuracy budget's choice"):
        quantize(standardized, tmp_path, budget_drop=0.02, fallback="auto", require_integer="true")


def test_the_search_fails_in_one_line_when_even_every_layer_float_misses_the_floor(tmp_path, standardized, caplog):
    caplog.set_level(logging.INFO, logger="test")
    ctx = context(tmp_path, "x")
    keras_model = standardized.load_keras()
    calibrated = debug.calibrate(keras_model, calibration_set(ctx.data.x_train, CALIBRATION_SAMPLES, ctx.seed))
    with pytest.raises(PipelineError, match=r"^stages.quantize.fallback: even with all 6 quantized layers float .* below the floor 1.0000"):
        search(calibrated, debug.keras_layer_names(keras_model), ctx.data, 1.0, "stages.quantize", ctx.log)
    # One model per added layer, worst first: the hostile layer before the rest.
    tried = [r.getMessage() for r in caplog.records if "fallback:" in r.getMessage()]
    assert len(tried) == 6 and "normalization float" in tried[0]


def test_fallback_refuses_a_tolerance_above_the_incoming_model(tmp_path, standardized):
    with pytest.raises(PipelineError, match=r"^stages.quantize.fallback: the incoming model's validation accuracy .* already below the floor"):
        quantize(standardized, tmp_path, fallback="auto", accuracy_tolerance=-0.1)


def test_fallback_refuses_an_input_already_below_the_floor(tmp_path, standardized):
    ctx = with_budget(context(tmp_path, "quantize", 1), reference=1.0, drop=0.01)
    ctx = dataclasses.replace(ctx, budget=dataclasses.replace(ctx.budget, available=0.9))
    with pytest.raises(PipelineError, match=r"^stages.quantize.fallback: the incoming model's validation accuracy .* already below the floor 0.99"):
        QuantizeStage(QuantizeParams(mode="int8", fallback="auto")).run(standardized, ctx)


def test_no_layer_stays_float_when_full_integer_meets_the_budget(tmp_path, trained):
    out = quantize(trained, tmp_path, budget_drop=0.05, fallback="auto")
    assert out.metadata["float_layers"] == [] and out.metadata["fully_integer"] is True
    assert out.metadata["fallback"]["steps"] == [] and out.reports == ()
    assert float_operators(out.path) == []


def test_fallback_needs_int8():
    with pytest.raises(ValueError, match="fallback=auto needs mode=int8"):
        QuantizeParams(mode="int16x8", fallback="auto")


# Quantization-aware training: fallback leaves the chosen layers out of quantization and re-tunes.


def test_qat_keeps_chosen_layers_float_in_training(trained):
    keras_model = trained.load_keras()
    hidden = keras_model.layers[-2].name
    aware, _ = quantize_aware(keras_model, "default", [hidden])
    configs = {layer.layer.name: layer.quantize_config for layer in aware.layers if hasattr(layer, "quantize_config")}
    kept = configs[hidden]
    assert type(kept).__name__ == "KeepFloat" and kept.get_output_quantizers(None) == []
    assert type(configs[keras_model.layers[0].name]).__name__ == "Default8BitConvQuantizeConfig"
    assert debug.keras_layer_names(aware)[f"quant_{hidden}"] == hidden


def test_the_integer_gate_accepts_only_the_layers_the_fallback_kept_float(tmp_path, trained):
    keras_model = trained.load_keras()
    hidden = keras_model.layers[-2].name
    aware, _ = quantize_aware(keras_model, "default", [hidden])
    path = tmp_path / "kept.tflite"
    ctx = context(tmp_path, "qat", 1)
    path.write_bytes(float_kept(aware, calibration_set(ctx.data.x_train, CALIBRATION_SAMPLES, ctx.seed), [hidden]))
    integer_gate(path, "stages.qat", aware, [hidden])  # float on purpose: accepted
    # Named as the layer the QAT wrapper wraps, as the user knows it.
    with pytest.raises(PipelineError, match=rf"^stages.qat.require_integer: layers the int8 kernels cannot run stay float: {hidden} \(Dense\): FULLY_CONNECTED"):
        integer_gate(path, "stages.qat", aware)


@pytest.mark.slow
def test_a_qat_candidate_is_fine_tuned_and_converted_with_the_chosen_layers_float(tmp_path, trained):
    ctx = context(tmp_path, "qat", 1)
    hidden = trained.load_keras().layers[-2].name
    stage = QuantizeAwareStage(QuantizeAwareParams(epochs=1, fallback="auto", accuracy_tolerance=0.5))
    calibration = calibration_set(ctx.data.x_train, CALIBRATION_SAMPLES, ctx.seed)
    flatbuffer = stage.candidate(trained, "default", calibration, ctx, lambda model: model, calibration, [hidden])
    path = tmp_path / "candidate.tflite"
    path.write_bytes(flatbuffer)
    assert "FULLY_CONNECTED" in float_operators(path) and "CONV_2D" not in float_operators(path)
    assert litert.interpreter(path, threads=1).get_input_details()[0]["dtype"] == np.int8
    assert validation_accuracy(ModelArtifact(path, ModelFormat.TFLITE, "qat"), ctx.data) > 0.5


@pytest.mark.slow
def test_qat_fallback_keeps_every_layer_int8_when_the_budget_holds(tmp_path, trained):
    ctx = with_budget(context(tmp_path, "qat", 1), validation_accuracy(trained, context(tmp_path, "x").data), 0.05)
    out = QuantizeAwareStage(QuantizeAwareParams(epochs=1, fallback="auto")).run(trained, ctx)
    assert out.metadata["float_layers"] == [] and out.metadata["fully_integer"] is True
    assert out.metrics["int8_val_accuracy"] >= ctx.budget.floor
