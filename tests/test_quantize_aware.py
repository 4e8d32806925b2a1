"""Quantization-aware training, plain and collaborative (PQAT, CQAT, PCQAT), converted to int8."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.config.recipe import check_recipe
from pipeline.errors import PipelineError
from pipeline.measure import litert
from pipeline.measure.metrics import sparsity_of
from pipeline.plugin.artifact import Effect
from stages.cluster import ClusterParams, ClusterStage
from stages.export import ExportParams, ExportStage
from stages.prune import PruneParams, PruneStage
from stages.qat import QuantizeAwareParams, QuantizeAwareStage, chosen_scheme
from tests._runs import compose_config
from tests._tiny import accuracy, context


@pytest.fixture(scope="module")
def pruned(trained, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("pruned")
    return PruneStage(PruneParams(final_sparsity=0.6, epochs=2)).run(trained, context(tmp_path, "prune", 1))


def qat(model, tmp_path, index=2, **params):
    return QuantizeAwareStage(QuantizeAwareParams(epochs=1, **params)).run(model, context(tmp_path, "qat", index))


def test_auto_scheme_follows_earlier_stages():
    pruned, clustered = Effect.PRUNED, Effect.CLUSTERED
    assert chosen_scheme("auto", frozenset()) == "default"
    assert chosen_scheme("auto", frozenset({pruned})) == "pqat"
    assert chosen_scheme("auto", frozenset({clustered})) == "cqat"
    assert chosen_scheme("auto", frozenset({pruned, clustered})) == "pcqat"
    assert chosen_scheme("default", frozenset({pruned})) == "default"


def test_plain_qat_converts_to_full_integer(tmp_path, trained):
    out = qat(trained, tmp_path, 1)
    assert out.effects == {Effect.QUANTIZE_AWARE} and out.metadata["qat_scheme"] == "default"
    assert out.path.suffix == ".tflite" and out.metadata["fully_integer"] is True
    data = context(tmp_path, "x").data
    assert accuracy(out, data) >= accuracy(trained, data) - 0.05


@pytest.mark.slow
def test_pqat_keeps_the_target_sparsity_in_the_int8_file(tmp_path, pruned):
    out = qat(pruned, tmp_path)
    assert out.metadata["qat_scheme"] == "pqat"
    kernels = [t for t in litert.constant_tensors(out.path) if len(t[0]) >= 2]
    assert sparsity_of(kernels) >= 0.6 - 0.02


@pytest.mark.slow
def test_plain_qat_after_pruning_loses_sparsity_pqat_keeps(tmp_path, pruned):
    # A fine-tune brisk enough to move zeros past int8 rounding: plain QAT lets them grow back.
    lost = sparsity_of(litert.constant_tensors(qat(pruned, tmp_path / "p", scheme="default", learning_rate=3e-3).path))
    kept = sparsity_of(litert.constant_tensors(qat(pruned, tmp_path / "k", scheme="pqat", learning_rate=3e-3).path))
    assert kept >= 0.6 - 0.02 and lost < kept - 0.05, (kept, lost)


@pytest.mark.slow
def test_pcqat_keeps_clusters_and_zeros(tmp_path, pruned):
    clustered = ClusterStage(ClusterParams(number_of_clusters=8, epochs=1)).run(pruned, context(tmp_path, "cluster", 2))
    out = qat(clustered, tmp_path, 3)
    assert out.metadata["qat_scheme"] == "pcqat"
    tensors = litert.constant_tensors(out.path)
    assert sparsity_of(tensors) >= 0.55
    assert len(np.unique(int8_kernel_values(out.path, [64, 512]))) <= 8 + 1  # the clusters, and zero


def int8_kernel_values(path, shape):
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model(str(path))
    tensor = next(t for t in model.subgraphs[0].tensors if t.shape is not None and list(t.shape) == shape)
    return np.frombuffer(np.asarray(model.buffers[tensor.buffer].data, np.uint8).tobytes(), np.int8)


@pytest.mark.slow
def test_cqat_keeps_clusters_where_plain_qat_does_not(tmp_path, trained):
    clustered = ClusterStage(ClusterParams(number_of_clusters=4, epochs=1)).run(trained, context(tmp_path, "cluster", 1))
    kept = qat(clustered, tmp_path / "c")
    assert kept.metadata["qat_scheme"] == "cqat"
    assert len(np.unique(int8_kernel_values(kept.path, [64, 512]))) <= 4
    spread = qat(clustered, tmp_path / "d", scheme="default")
    assert len(np.unique(int8_kernel_values(spread.path, [64, 512]))) > 4


@pytest.mark.slow
def test_accuracy_gate_fails_when_nothing_can_pass(tmp_path, trained):
    with pytest.raises(PipelineError, match=r"stages.qat.accuracy_tolerance: TFLite validation accuracy .* more than the allowed -0.5") as raised:
        qat(trained, tmp_path, 1, accuracy_tolerance=-0.5)
    # The advice names fixes the stage has not taken: it already trains quantization-aware.
    assert str(raised.value).endswith(
        "allowed -0.5; fine-tune longer (stages.qat.epochs, now 1), set stages.qat.fallback=auto "
        "or raise stages.qat.accuracy_tolerance")
    assert "qat stage" not in str(raised.value) and "quantization-aware" not in str(raised.value)


def test_explicit_scheme_without_its_stage_fails_at_validation(tmp_path):
    cfg = compose_config(tmp_path)
    cfg.stages = {"train": {}, "qat": {"scheme": "pqat"}, "export": {}}
    with pytest.raises(PipelineError, match=r"stages.qat.scheme: 'pqat' .* the model reaching it is not pruned"):
        check_recipe(cfg)


@pytest.mark.parametrize("stages, missing", [
    ({"train": {}, "prune": {}, "retrain": {"type": "train"}, "qat": {"scheme": "pqat"}}, "pruned"),
    ({"train": {}, "prune": {}, "cluster": {"preserve_sparsity": "false"}, "qat": {"scheme": "pcqat"}}, "pruned"),
    ({"train": {}, "cluster": {}, "prune": {}, "qat": {"scheme": "cqat"}}, "clustered"),
])
def test_stages_that_undo_an_effect_are_seen_at_validation(tmp_path, stages, missing):
    cfg = compose_config(tmp_path)
    cfg.stages = stages
    with pytest.raises(PipelineError, match=rf"stages.qat.scheme: .* the model reaching it is not {missing}"):
        check_recipe(cfg)


def test_nothing_compresses_after_qat(tmp_path):
    cfg = compose_config(tmp_path)
    cfg.stages = {"train": {}, "qat": {}, "prune": {}}
    with pytest.raises(PipelineError, match=r"stages.prune: needs a keras model but gets a tflite model from stages.qat"):
        check_recipe(cfg)


def test_explicit_pqat_on_an_unpruned_model_fails_at_run(tmp_path, trained):
    with pytest.raises(PipelineError, match=r"stages.qat.scheme: 'pqat' .* the model reaching it is not pruned"):
        qat(trained, tmp_path, 1, scheme="pqat")


def test_activation_ranges_start_at_the_data_not_at_tfmot_defaults(trained):
    import tf_keras as keras

    from techniques.qat import quantize_aware, settle_ranges
    from tests._tiny import digits

    x = digits().x_train[:256]
    model = trained.load_keras()
    hidden = keras.Model(model.inputs, model.layers[-2].output)(x).numpy()  # the ReLU dense layer's outputs
    aware, _ = quantize_aware(model, "default")
    low, high = (next(v for v in aware.non_trainable_variables if v.name.endswith(f"{model.layers[-2].name}/post_activation_{end}:0"))
                 for end in ("min", "max"))
    aware(x, training=True)  # a training step moves TFMOT's [-6, 6] start by only 0.1%
    assert float(low.numpy()) < -5.9 and float(high.numpy()) > 5.9
    settle_ranges(aware, x)
    assert float(low.numpy()) == pytest.approx(0.0, abs=1e-2)
    assert float(high.numpy()) == pytest.approx(float(hidden.max()), rel=0.05)


def test_ranges_of_a_layer_called_twice_cover_both_calls():
    import tf_keras as keras

    from pipeline.models.flatten import flatten
    from techniques.qat import quantize_aware, settle_ranges
    from tests._tiny import digits
    from tests._user_models import shared_layer

    x = digits().x_train[:256]
    model = flatten(shared_layer((8, 8, 1), 10), x[:8])
    relu = next(layer for layer in model.layers if isinstance(layer, keras.layers.ReLU))
    add = next(layer for layer in model.layers if isinstance(layer, keras.layers.Add))
    calls = add.inbound_nodes[-1].input_tensors  # the Add of the flat graph: the shared block's two outputs
    both = [float(t.numpy().max()) for t in keras.Model(model.inputs, calls)(x)]
    aware, _ = quantize_aware(model, "default")
    settle_ranges(aware, x)
    (high,) = [v for v in aware.non_trainable_variables if f"/{relu.name}" in v.name or f"quant_{relu.name}/" in v.name
               if v.name.endswith("max:0")]
    # Updated twice per pass, the range settles between the two calls' maxima, not at a negative value.
    assert 0.9 * min(both) <= float(high.numpy()) <= 1.1 * max(both)


@pytest.mark.slow
def test_a_keras_export_after_qat_says_which_model_it_holds(tmp_path, trained, caplog):
    quantized = qat(trained, tmp_path, 1)
    with caplog.at_level("WARNING"):
        ExportStage(ExportParams(formats=["tflite", "keras"], metadata=False)).run(quantized, context(tmp_path, "export", 2))
    assert "model.keras is the model of stage 'train', from before quantization-aware training" in caplog.text
    assert "model.tflite is the model" not in caplog.text
