"""Weight clustering: distinct values per kernel, centroid choices, sparsity kept after pruning."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.artifact import Effect
from pipeline.errors import PipelineError
from stages.cluster import ClusterParams, ClusterStage, check_kept_sparsity, unique_values
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


def test_check_of_kept_sparsity_names_the_fix():
    import tf_keras as keras

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(4, kernel_initializer="ones", name="dense")])
    with pytest.raises(PipelineError, match=r"stages.cluster: clustering lowered sparsity to 0.0% from 50.0%"):
        check_kept_sparsity(model, {"target_sparsity": 0.5, "pruned_layers": ["dense"]}, "cluster")


def test_per_channel_counts_each_output_channel():
    kernel = np.stack([np.array([1.0, 2.0, 1.0]), np.array([3.0, 4.0, 5.0])], axis=-1)
    assert unique_values(kernel, per_channel=False) == 5
    assert unique_values(kernel, per_channel=True) == 3
