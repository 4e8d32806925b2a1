"""A precision per layer and int4 weights, written by ai-edge-quantizer on the converted float model."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest

from pipeline.errors import PipelineError
from pipeline.measure import litert
from pipeline.measure.metrics import validation_accuracy
from stages.quantize import QuantizeParams, QuantizeStage
from techniques import mixed_precision as mixed
from techniques import quant_debug as debug
from techniques import quantizer_errors
from techniques.conversion import CALIBRATION_SAMPLES, calibration_set, convert
from tests._tiny import context, digits, op_types


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The small digits CNN (conv2d, conv2d_1, dense, dense_1) trained for a few epochs, as a train stage's artifact."""
    import tf_keras

    from stages.train import TrainParams
    from techniques.training import compile_model, fit, save_keras

    tf_keras.backend.clear_session()  # the rules below name layers by Keras's default names, counted per session
    ctx = context(tmp_path_factory.mktemp("trained"), "train")
    model, params = ctx.build_model(), TrainParams(epochs=4)
    compile_model(model, params)
    fit(model, params, ctx.data, ctx.device, seed=0, log=ctx.log, name=ctx.name)
    return save_keras(model, None, ctx.workdir, ctx.name, ctx.log, effects=frozenset())


def quantize(model, tmp_path, **params):
    return QuantizeStage(QuantizeParams(**params)).run(model, context(tmp_path, "quantize", 1))


def logit_error(path, keras_model, x) -> float:
    """Root-mean-square difference of the file's logits from the Keras model's."""
    return float(np.sqrt(np.mean(np.square(litert.predict(path, x) - keras_model.predict(x, verbose=0)))))


def test_calibration_matches_tflite_converters_ranges(tmp_path, trained):
    # The quantizer's own calibration (a moving average of per-sample ranges) clipped the logits'
    # error to 150x TFLiteConverter's; the global min/max must land on the converter's error.
    ctx = context(tmp_path, "x")
    keras_model = trained.load_keras()
    calibration = calibration_set(ctx.data.x_train, CALIBRATION_SAMPLES, ctx.seed)
    reference = tmp_path / "converter.tflite"
    reference.write_bytes(convert(keras_model, "int8", calibration, sparse=False))
    ours = tmp_path / "quantizer.tflite"
    # A precision rule that says what the mode says: the whole model int8, written by the quantizer.
    ours.write_bytes(mixed.write(keras_model, "int8", {}, {"dense": "int8"}, calibration, "stages.q")[0])
    x = ctx.data.x_val[:200]
    assert logit_error(ours, keras_model, x) <= 1.5 * logit_error(reference, keras_model, x)


def test_int4_weights_make_the_file_smaller_and_it_still_runs(tmp_path, trained):
    data = context(tmp_path, "x").data
    int8 = quantize(trained, tmp_path / "int8")
    int4 = quantize(trained, tmp_path / "int4", weights="int4")
    assert int4.path.stat().st_size < 0.7 * int8.path.stat().st_size
    types = op_types(int4.path, debug.keras_layer_names(trained.load_keras()))
    assert all(weights == ["int4"] for ops in types.values() for (name, _, weights) in ops if name == "FULLY_CONNECTED")
    accuracy = validation_accuracy(int4, data)  # it runs in LiteRT and still classifies
    assert accuracy > 0.8 and accuracy > validation_accuracy(int8, data) - 0.05, accuracy
    assert int4.metadata["layer_precisions"]["dense"] == "int4 weights, int8"
    assert int4.metadata["layer_precisions"]["max_pooling2d"] == "int8"  # no weights to store in 4 bits


def test_a_layer_asked_float_stays_float_and_one_asked_int16_has_int16_activations(tmp_path, trained):
    out = quantize(trained, tmp_path, precision={"default": "int8", "dense_1": "int16", "conv2d": "float"})
    types = op_types(out.path, debug.keras_layer_names(trained.load_keras()))
    assert types["conv2d"] == [("CONV_2D", "float32", ["float32"])]
    assert types["dense_1"] == [("FULLY_CONNECTED", "int16", ["int8"])]
    assert types["dense"] == [("FULLY_CONNECTED", "int8", ["int8"])]
    runner = litert.interpreter(out.path, threads=1)  # the input and output stay what mode=int8 says
    assert runner.get_input_details()[0]["dtype"] == np.int8 and runner.get_output_details()[0]["dtype"] == np.int8
    assert out.metadata["float_layers"] == ["conv2d (Conv2D)"] and out.metadata["fully_integer"] is False
    assert out.metadata["layer_precisions"] == {
        "conv2d": "float32", "conv2d_1": "int8", "max_pooling2d": "int8", "flatten": "int8", "dense": "int8",
        "dense_1": "int16x8",
    }


def test_rules_by_layer_type_and_name_first(tmp_path, trained):
    _, choices = mixed.resolve(trained.load_keras(), {"Dense": "int16", "dense": "float"}, {"Conv2D": "int4"}, "int8", "s")
    assert (choices["dense"].precision, choices["dense_1"].precision, choices["conv2d"].precision) == ("float", "int16", "int8")
    assert (choices["conv2d_1"].weights, choices["dense_1"].weights, choices["dense_1"].precision_key) == ("int4", "int8", "precision.Dense")


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        ({"precision": {"dense_9": "int16"}}, "stages.quantize.precision.dense_9: no layer or layer type of that name"),
        ({"weights": {"Embedding": "int4"}}, "stages.quantize.weights.Embedding: no layer or layer type of that name"),
        ({"precision": {"dense": "float"}, "weights": {"dense": "int4"}}, "stages.quantize.weights.dense: int4 weights need layer dense quantized"),
    ],
)
def test_bad_rules_fail_in_one_line_naming_the_key(tmp_path, trained, rules, message):
    with pytest.raises(PipelineError, match=message.replace(".", r"\.")) as error:
        quantize(trained, tmp_path, **rules)
    assert "\n" not in str(error.value)


def test_an_op_the_quantizer_cannot_write_so_is_named_not_skipped():
    # ai-edge-quantizer has no int4 DEPTHWISE_CONV_2D; a `*` rule would silently leave it int8.
    import tf_keras as keras

    inputs = keras.Input((8, 8, 2))
    x = keras.layers.DepthwiseConv2D(3, name="depthwise")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(3, name="head")(keras.layers.Flatten()(x)))
    calibration = np.random.default_rng(0).normal(size=(8, 8, 8, 2)).astype(np.float32)
    with pytest.raises(PipelineError, match=r"^stages\.q\.weights\.default: ai-edge-quantizer cannot write DEPTHWISE_CONV_2D \(layer depthwise\) as int4 weights, int8; give it int8 weights$"):
        mixed.write(model, "int8", {}, "int4", calibration, "stages.q")
    flatbuffer, choices = mixed.write(model, "int8", {}, {"default": "int4", "DepthwiseConv2D": "int8"}, calibration, "stages.q")
    assert (choices["depthwise"].words, choices["head"].words) == ("int8", "int4 weights, int8")


def test_a_rule_that_did_not_take_effect_is_named(trained):
    keras_model = trained.load_keras()
    calibration = calibration_set(digits().x_train, 50, 0)
    flatbuffer, choices = mixed.write(keras_model, "int8", {}, "int4", calibration, "stages.q")
    # The same file checked against rules it does not hold: dense asked float.
    asked = {**choices, "dense": mixed.Choice("float", "int8", "precision.dense", "weights.default")}
    with pytest.raises(PipelineError, match=r"stages\.q\.precision\.dense: asked float32 for layer dense, but its FULLY_CONNECTED has activations int8"):
        mixed.check_written(flatbuffer, keras_model, asked, "int8", "stages.q")


def test_which_settings_need_the_quantizer():
    with pytest.raises(ValueError, match="need mode=int8 or int16x8"):
        QuantizeParams(mode="dynamic", weights="int4")
    assert not QuantizeParams(precision={"default": "int8"}).mixed  # TFLiteConverter writes that alone
    assert not QuantizeParams(fallback="auto").mixed  # today's float fallback
    assert QuantizeParams(mode="int16x8", precision={"default": "int8"}).mixed
    assert QuantizeParams(fallback="auto", fallback_steps=["int16", "float"]).mixed
    assert QuantizeParams(mode="int16x8", precision={"dense": "float"}, fallback="auto").mixed  # int16x8 may fall back now


@pytest.fixture(scope="module")
def standardized(tmp_path_factory):
    """The per-pixel standardising CNN trained on digits: int8 ruins its normalization layer."""
    from tests._tiny import trained_standardized

    return trained_standardized(tmp_path_factory.mktemp("standardized"))


def with_budget(ctx, model, drop: float):
    """`ctx` as the runner makes it when a budget of `drop` below the model's validation accuracy is left whole."""
    import dataclasses

    from pipeline.run.budget import Budget

    reference = validation_accuracy(model, ctx.data)
    return dataclasses.replace(ctx, budget=Budget(reference, "train", drop, reference))


def test_the_fallback_climbs_the_precision_ladder_for_the_worst_layer_first(tmp_path, standardized):
    ctx = with_budget(context(tmp_path, "quantize", 1), standardized, 0.03)
    params = QuantizeParams(weights="int4", fallback="auto", fallback_steps=["int8", "int16", "float"])
    out = QuantizeStage(params).run(standardized, ctx)
    trials = out.metadata["fallback"]["trials"]
    assert trials[0]["layer"] == "normalization"  # the layer int8 ruins is ranked first
    assert validation_accuracy(out, ctx.data) >= ctx.budget.floor
    report = (out.path.parent / "fallback.md").read_text()
    assert "| p50 ms |" in report and "| normalization | float32 |" in report
    assert out.metadata["fallback"]["float_layers"] == ["normalization"]
    assert out.metadata["layer_precisions"]["normalization"] == "float32"
    assert out.metadata["layer_precisions"]["hidden"] == "int4 weights, int8"  # the others stay as the rules ask


@pytest.mark.slow
def test_a_latency_limit_refuses_steps(tmp_path, standardized):
    ctx = with_budget(context(tmp_path, "quantize", 1), standardized, 0.03)
    params = QuantizeParams(weights="int4", fallback="auto", fallback_steps=["int16", "float"], fallback_max_latency_ms=1e-6)
    with pytest.raises(PipelineError, match=r"^stages\.quantize\.fallback: no allowed precision steps .*fallback_max_latency_ms") as error:
        QuantizeStage(params).run(standardized, ctx)
    assert "\n" not in str(error.value)


def test_the_quantizers_per_layer_error_agrees_with_our_own(tmp_path, trained):
    keras_model = trained.load_keras()
    data = context(tmp_path, "x").data
    calibration = calibration_set(data.x_train, CALIBRATION_SAMPLES, 0)
    x = data.x_val[:64]
    ours = debug.int8_errors(keras_model, calibration, x)
    theirs = quantizer_errors.layer_errors(mixed.plan(keras_model, "int8", {}, "int8", calibration, "s"), x)
    # Layers with weights: the same error within a factor of 1.5 (measured: within 20%), and the same worst layer.
    for layer in ("conv2d", "conv2d_1", "dense", "dense_1"):
        assert 1 / 1.5 < theirs[layer].noise_to_signal / ours[layer] < 1.5, (layer, theirs[layer], ours[layer])
    weighted = ("conv2d", "conv2d_1", "dense", "dense_1")
    assert max(weighted, key=lambda n: theirs[n].noise_to_signal) == max(weighted, key=ours.get)
    assert all(theirs[layer].mse > 0 for layer in weighted)


@pytest.mark.slow
def test_the_sensitivity_table_can_take_the_quantizers_errors(tmp_path, trained):
    from stages.sensitivity import SensitivityParams, SensitivityStage

    params = SensitivityParams(sparsities=[0.5], target_sparsity=0.5, int8_error_by="quantizer", max_examples=60)
    out = SensitivityStage(params).run(trained, context(tmp_path, "sensitivity", 1))
    table = (out.path.parent / "sensitivity.md").read_text()
    assert "| int8 error | int8 SNR | int8 MSE |" in table
    row = next(line for line in table.splitlines() if line.startswith("| dense_1 |")).split("|")
    error, snr = float(row[-5]), float(row[-4])
    assert error == pytest.approx(1 / np.sqrt(snr), rel=1e-2)  # both printed to 3 digits


def test_the_ladder_goes_from_int4_weights_to_float_through_the_allowed_steps():
    from techniques.precision_fallback import steps_after

    int4 = mixed.Choice("int8", "int4", "precision.default", "weights.default")
    words = lambda steps: [step.words for step in steps]  # noqa: E731
    assert words(steps_after(int4, ["int8", "int16", "float"], weighted=True)) == ["int8", "int16x8", "float32"]
    assert words(steps_after(int4, ["int8", "float"], weighted=True)) == ["int8", "float32"]
    assert words(steps_after(int4, ["int16", "float"], weighted=False)) == ["int16x8", "float32"]
    assert words(steps_after(int4, ["int8"], weighted=False)) == []  # no weights to widen
    assert steps_after(mixed.Choice("float", "int8", "k", "k"), ["int8", "int16", "float"], weighted=True) == []


def test_zeros_in_int4_weights_are_counted():
    # A kernel half zeros, written with int4 weights: the measure reads the packed nibbles.
    import tf_keras as keras

    inputs = keras.Input((16,))
    dense = keras.layers.Dense(8, name="head")
    model = keras.Model(inputs, dense(inputs))
    kernel = np.random.default_rng(0).normal(size=(16, 8)).astype(np.float32)
    kernel[:8] = 0
    dense.set_weights([kernel, np.zeros(8, np.float32)])
    calibration = np.random.default_rng(1).normal(size=(16, 16)).astype(np.float32)
    flatbuffer, _ = mixed.write(model, "int8", {}, "int4", calibration, "stages.q")
    path = Path(tempfile.mkdtemp()) / "int4.tflite"
    path.write_bytes(flatbuffer)
    [zeros] = [zeros for shape, _, zeros in litert.constant_tensors(path) if shape == (8, 16)]
    assert zeros is not None and 64 <= zeros < 80  # the 64 zeros, and a few small weights int4 rounds to zero


def test_the_quantizers_error_alone_grows_from_int8_to_int4_weights():
    # The cheap twin of the stage-level test below: a two-layer model, each layer measured alone.
    import tf_keras as keras

    from techniques.precision_fallback import ErrorAlone

    keras.utils.set_random_seed(0)
    inputs = keras.Input((16,))
    model = keras.Model(inputs, keras.layers.Dense(4, name="head")(keras.layers.Dense(32, activation="relu", name="body")(inputs)))
    x = np.random.default_rng(1).normal(size=(64, 16)).astype(np.float32)
    rules = mixed.plan(model, "int8", {}, "int4", x, "stages.q")
    start = rules.reported(rules.choices)
    int8 = {name: mixed.Choice("int8", "int8", "k", "k") for name in start}
    quantizer = ErrorAlone(rules, start, x[:32], "quantizer")
    own = ErrorAlone(rules, start, x[:32], "own")
    for layer in ("body", "head"):
        coarse, fine = quantizer(layer, start[layer]), quantizer(layer, int8[layer])
        assert 0 < fine < coarse < 1, (layer, fine, coarse)
        assert own(layer, start[layer]) > own(layer, int8[layer])


@pytest.mark.slow
def test_the_fallback_can_rank_layers_by_the_quantizers_validation(tmp_path, standardized):
    from techniques.precision_fallback import RANKING_EXAMPLES, ErrorAlone

    ctx = with_budget(context(tmp_path, "quantize", 1), standardized, 0.03)
    params = QuantizeParams(weights="int4", fallback="auto", fallback_error_by="quantizer")
    assert params.mixed  # only the quantizer's ladder can rank by its validation
    out = QuantizeStage(params).run(standardized, ctx)
    first = out.metadata["fallback"]["trials"][0]
    assert first["layer"] == "normalization"
    assert "ai-edge-quantizer's 1/sqrt(SNR)" in (out.path.parent / "fallback.md").read_text()
    # The layer that ruins the model: both measures say its output is lost (measured: 1.00 and 0.99).
    # On the other layers the quantizer's error of the layer's own output was 3 to 30x below our
    # logits' error and ranked them in another order (guides/mixed-precision.md).
    calibration = calibration_set(ctx.data.x_train, CALIBRATION_SAMPLES, ctx.seed)
    rules = mixed.plan(standardized.load_keras(), "int8", {}, "int4", calibration, "s")
    start = rules.reported(rules.choices)
    own = ErrorAlone(rules, start, ctx.data.x_val[:RANKING_EXAMPLES], "own")("normalization", start["normalization"])
    assert first["error"] == pytest.approx(own, rel=0.1)
    assert first["error"] > 0.5
