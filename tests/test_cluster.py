"""Weight clustering: distinct values per kernel, centroid choices, sparsity kept after pruning."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.errors import PipelineError
from pipeline.plugin.artifact import Effect
from stages.cluster import ClusterParams, ClusterStage
from stages.prune import PruneParams, PruneStage
from techniques.clustering import check_kept_sparsity, clusters_for, unique_values
from techniques.pruning import pruned_sparsity
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


def test_a_layer_with_fewer_weights_than_clusters_gets_the_clusters_it_can_hold(tmp_path, trained):
    # The first convolution has 3 x 3 x 1 x 16 = 144 weights: TFMOT's k-means++ cannot place 200 centroids.
    out = ClusterStage(ClusterParams(number_of_clusters=200, epochs=1)).run(trained, context(tmp_path, "cluster", 1))
    model = out.load_keras()
    kernels = [layer.name for layer in model.layers if hasattr(layer, "kernel")]
    assert out.metadata["clustered_layers"] == kernels
    first = out.metadata["clusters_per_layer"][kernels[0]]
    assert 2 <= first <= 144
    assert np.unique(model.get_layer(kernels[0]).get_weights()[0]).size <= first


def test_kept_zeros_need_weights_on_both_signs():
    kernel = np.array([-1.0, -2.0, 0.0, 0.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0])  # 2 negative, 6 positive
    assert clusters_for(kernel, 8, per_channel=False, preserve=True) == 8  # 7 centroids: 2 negative, 5 positive
    assert clusters_for(kernel, 12, per_channel=False, preserve=True) == 9  # 11 would want 3 negatives
    assert clusters_for(kernel, 10, per_channel=False, preserve=False) == 9  # 9 distinct values
    channels = kernel.reshape(5, 1, 1, 2)  # 5 distinct weights in each of 2 output channels
    assert clusters_for(channels, 6, per_channel=True, preserve=False) == 5


def test_check_of_kept_sparsity_names_the_fix():
    import tf_keras as keras

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(4, kernel_initializer="ones", name="dense")])
    with pytest.raises(PipelineError, match=r"stages.cluster: clustering lowered sparsity to 0.0% from 50.0%"):
        check_kept_sparsity(model, {"target_sparsity": 0.5, "pruned_layers": ["dense"]}, "cluster")


def test_per_channel_counts_each_output_channel():
    kernel = np.stack([np.array([1.0, 2.0, 1.0]), np.array([3.0, 4.0, 5.0])], axis=-1)
    assert unique_values(kernel, per_channel=False) == 5
    assert unique_values(kernel, per_channel=True) == 3


def test_a_kernel_gets_no_more_clusters_than_it_has_distinct_weights():
    kernel = np.array([[1.0, 2.0], [2.0, 3.0]])
    assert clusters_for(kernel, 16, per_channel=False, preserve=False) == 3
    assert clusters_for(kernel, 2, per_channel=False, preserve=False) == 2
    assert clusters_for(np.ones((2, 2)), 16, per_channel=False, preserve=False) == 0  # one value: nothing to cluster


def test_keeping_zeros_each_sign_must_hold_its_share_of_centroids():
    # 9 negative and 1 positive weight, mostly zeros: 15 non-zero centroids would go 14 to the
    # negatives (as TFMOT splits them), more than their 9 values; 11 clusters put 9 there and 1 on the positive.
    kernel = np.zeros(100)
    kernel[:9] = -np.arange(1, 10)
    kernel[9] = 5.0
    assert clusters_for(kernel, 16, per_channel=False, preserve=True) == 11
    assert clusters_for(np.zeros(10), 16, per_channel=False, preserve=True) == 0


def test_per_channel_the_narrowest_channel_decides():
    kernel = np.arange(3 * 3 * 1 * 4, dtype=np.float32).reshape(3, 3, 1, 4)  # 9 distinct values per channel
    assert clusters_for(kernel, 16, per_channel=True, preserve=False) == 9
    assert clusters_for(kernel, 16, per_channel=False, preserve=False) == 16


@pytest.mark.slow
def test_clustering_after_heavy_pruning_fits_each_layer_and_says_so(tmp_path, trained, caplog):
    # 90% pruning leaves the first convolution (144 weights) about 14 non-zero: fewer than 16 clusters need.
    pruned = PruneStage(PruneParams(final_sparsity=0.9, epochs=2)).run(trained, context(tmp_path, "prune", 1))
    with caplog.at_level("WARNING", logger="test"):
        out = ClusterStage(ClusterParams(number_of_clusters=16, epochs=1)).run(pruned, context(tmp_path, "cluster", 2))
    plan = out.metadata["clusters_per_layer"]
    first = pruned.metadata["pruned_layers"][0]
    assert 0 <= plan[first] < 16 and out.metrics[f"clusters.{first}"] == plan[first]
    assert first in caplog.text and "too few distinct weights" in caplog.text
    model = out.load_keras()
    for name, clusters in plan.items():
        kernel = model.get_layer(name).get_weights()[0]
        assert unique_values(kernel, per_channel=False) <= (clusters or kernel.size), name
    assert pruned_sparsity(model, pruned.metadata["pruned_layers"]) >= 0.88


@pytest.mark.slow
def test_per_channel_clustering_of_a_thin_convolution_runs(tmp_path, trained):
    out = ClusterStage(ClusterParams(number_of_clusters=16, per_channel=True, epochs=1)).run(
        trained, context(tmp_path, "cluster", 1)
    )
    first = out.metadata["clustered_layers"][0]
    assert out.metadata["clusters_per_layer"][first] == 9  # a 3x3 kernel on one input channel: 9 weights per channel
    assert unique_values(out.load_keras().get_layer(first).get_weights()[0], per_channel=True) <= 9
