"""Weight clustering: distinct values per kernel, centroid choices, sparsity kept after pruning."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.artifact import Effect
from pipeline.errors import PipelineError
from stages.cluster import ClusterParams, ClusterStage, check_kept_sparsity, enough_weights, unique_values
from stages.prune import PruneParams, PruneStage, pruned_sparsity
from tests._tiny import accuracy, context


@pytest.mark.parametrize("init", ["kmeans_plus_plus", "linear"])
def test_each_clustered_kernel_has_at_most_n_values(tmp_path, trained, init):
    out = ClusterStage(ClusterParams(number_of_clusters=8, centroid_init=init, epochs=1)).run(
        trained, context(tmp_path, "cluster", 1)
    )
    model = out.load_keras()
    assert out.effects == {Effect.CLUSTERED} and out.metadata["number_of_clusters"] == 8
    assert out.metadata["clustered_layers"] == [layer.name for layer in model.layers if hasattr(layer, "kernel")]
    for name in out.metadata["clustered_layers"]:
        assert unique_values(model.get_layer(name).get_weights()[0], per_channel=False) <= 8
    assert accuracy(out, context(tmp_path, "x").data) > 0.5


def test_clustering_after_pruning_keeps_the_zeros(tmp_path, trained):
    pruned = PruneStage(PruneParams(final_sparsity=0.5, epochs=2)).run(trained, context(tmp_path, "prune", 1))
    out = ClusterStage(ClusterParams(number_of_clusters=8, epochs=1)).run(pruned, context(tmp_path, "cluster", 2))
    assert out.metadata["sparsity_preserved"] is True and out.effects == {Effect.PRUNED, Effect.CLUSTERED}
    assert pruned_sparsity(out.load_keras(), pruned.metadata["pruned_layers"]) >= 0.48


def test_clustering_without_preservation_gives_up_the_zeros_openly(tmp_path, trained):
    pruned = PruneStage(PruneParams(final_sparsity=0.5, epochs=2)).run(trained, context(tmp_path, "prune", 1))
    out = ClusterStage(ClusterParams(number_of_clusters=4, epochs=1, preserve_sparsity="false")).run(
        pruned, context(tmp_path, "cluster", 2)
    )
    assert out.effects == {Effect.CLUSTERED} and out.metadata["sparsity_preserved"] is False
    assert pruned_sparsity(out.load_keras(), pruned.metadata["pruned_layers"]) < 0.4


def test_a_layer_with_fewer_weights_than_clusters_stays_as_it_is(tmp_path, trained):
    # The first convolution has 3 x 3 x 1 x 16 = 144 weights: TFMOT's k-means++ cannot place 200 centroids.
    out = ClusterStage(ClusterParams(number_of_clusters=200, epochs=1)).run(trained, context(tmp_path, "cluster", 1))
    model = out.load_keras()
    kernels = [layer.name for layer in model.layers if hasattr(layer, "kernel")]
    assert out.metadata["clustered_layers"] == kernels[1:]
    assert model.get_layer(kernels[0]).get_weights()[0].size == 144


def test_kept_zeros_need_weights_on_both_signs():
    kernel = np.array([-1.0, -2.0, 0.0, 0.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0])  # 2 negative, 6 positive
    assert enough_weights(kernel, 8, preserve=True, per_channel=False)  # 7 centroids: 2 negative, 5 positive
    assert not enough_weights(kernel, 12, preserve=True, per_channel=False)  # 11: 3 negative wanted
    assert enough_weights(kernel, 10, preserve=False, per_channel=False)
    assert enough_weights(kernel.reshape(5, 2), 5, preserve=False, per_channel=True)  # 5 weights a channel
    assert not enough_weights(kernel.reshape(5, 2), 6, preserve=False, per_channel=True)


def test_check_of_kept_sparsity_names_the_fix():
    class Layer:
        name, kernel = "dense", type("K", (), {"numpy": lambda self: np.ones((4, 4))})()

    model = type("M", (), {"layers": [Layer()]})()
    with pytest.raises(PipelineError, match=r"stages.cluster: clustering lowered sparsity to 0.0% from 50.0%"):
        check_kept_sparsity(model, {"target_sparsity": 0.5, "pruned_layers": ["dense"]}, "cluster")


def test_per_channel_counts_each_output_channel():
    kernel = np.stack([np.array([1.0, 2.0, 1.0]), np.array([3.0, 4.0, 5.0])], axis=-1)
    assert unique_values(kernel, per_channel=False) == 5
    assert unique_values(kernel, per_channel=True) == 3
