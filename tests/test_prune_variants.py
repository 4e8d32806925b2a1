"""Pruning variants: m:n structured sparsity, choosing layers, sparse TFLite encoding, order rules."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.config.recipe import check_recipe
from pipeline.errors import PipelineError
from stages.prune import PruneParams, PruneStage
from stages.quantize import QuantizeParams, QuantizeStage
from techniques.pruning import follows_m_by_n, pruned_sparsity
from tests._runs import compose_config
from tests._tiny import context


def test_two_of_four_pattern_holds_in_every_pruned_kernel(tmp_path, trained):
    out = PruneStage(PruneParams(m_by_n=[2, 4], epochs=2)).run(trained, context(tmp_path, "prune", 1))
    model = out.load_keras()
    names = out.metadata["pruned_layers"]
    first_conv, *others = kernel_layers(model)
    assert names == others  # the first conv has one input channel: no groups of four
    assert out.metadata["left_dense"] == [first_conv] and out.metrics["layers_left_dense"] == 1

    for name in names:
        assert follows_m_by_n(model.get_layer(name).get_weights()[0], [2, 4]), name
    assert pruned_sparsity(model, names) == pytest.approx(0.5, abs=0.01)
    assert out.metadata["m_by_n"] == [2, 4] and out.metadata["target_sparsity"] == 0.5


def kernel_layers(model):
    return [layer.name for layer in model.layers if hasattr(layer, "kernel")]


def test_m_by_n_check_rejects_a_dense_kernel():
    kernel = np.arange(1, 33, dtype=np.float32).reshape(8, 4)
    assert not follows_m_by_n(kernel, [2, 4])
    kernel[::2] = 0  # every second input row zero: two zeros in each group of four along inputs
    assert follows_m_by_n(kernel, [2, 4])


def test_only_chosen_layers_are_pruned(tmp_path, trained):
    conv, conv_1, dense, logits = kernel_layers(trained.load_keras())
    params = PruneParams(final_sparsity=0.6, epochs=2, layers=["Dense"], skip_layers=[logits])
    out = PruneStage(params).run(trained, context(tmp_path, "prune", 1))
    model = out.load_keras()
    assert out.metadata["pruned_layers"] == [dense]
    assert pruned_sparsity(model, [dense]) == pytest.approx(0.6, abs=0.02)
    for name in (conv, conv_1, logits):
        assert np.count_nonzero(model.get_layer(name).get_weights()[0] == 0) < 5, name


def test_an_unknown_layer_name_is_named(tmp_path, trained):
    with pytest.raises(PipelineError, match=r"stages.prune.layers: 'dens' matches no layer"):
        PruneStage(PruneParams(layers=["dens"], epochs=1)).run(trained, context(tmp_path, "prune", 1))


def test_m_by_n_fixes_the_target_and_rejects_a_contradiction():
    assert PruneParams(m_by_n=[1, 4]).final_sparsity == 0.25
    with pytest.raises(ValueError, match="final_sparsity must be 0.5"):
        PruneParams(m_by_n=[2, 4], final_sparsity=0.8)
    with pytest.raises(ValueError, match="m must be smaller than n"):
        PruneParams(m_by_n=[4, 4])


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["none", "int8"])
def test_sparse_encoding_is_kept_only_where_it_helps(tmp_path, trained, mode):
    pruned = PruneStage(PruneParams(final_sparsity=0.8, epochs=2)).run(trained, context(tmp_path, "prune", 1))
    dense = QuantizeStage(QuantizeParams(mode=mode, keep_sparsity="false")).run(pruned, context(tmp_path / "d", "q", 2))
    auto = QuantizeStage(QuantizeParams(mode=mode)).run(pruned, context(tmp_path / "a", "q", 2))
    assert auto.path.stat().st_size <= dense.path.stat().st_size
    if auto.metadata["sparse_encoding"]:
        assert auto.path.stat().st_size < dense.path.stat().st_size
    if mode == "none":  # float kernels with 80% zeros: the sparse format is smaller and runs
        assert auto.metadata["sparse_encoding"] is True


def test_prune_after_int8_fails_at_validation(tmp_path):
    cfg = compose_config(tmp_path)
    cfg.stages = {"train": {}, "quantize": {"mode": "int8"}, "prune": {}}
    with pytest.raises(PipelineError, match=r"stages.prune: needs a keras model but gets a tflite model"):
        check_recipe(cfg)
