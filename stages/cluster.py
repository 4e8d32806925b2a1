"""cluster: TFMOT weight clustering with fine-tuning, stripped before hand-off (sparsity kept after pruning)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from pipeline.artifact import Effect, ModelArtifact
from pipeline.errors import PipelineError
from pipeline.stage import Stage, StageContext
from stages._layers import LayerChoice, wrap_chosen
from stages._training import FitParams, compile_model, fit, save_keras
from stages.prune import SPARSITY_TOLERANCE, pruned_sparsity


class ClusterParams(FitParams, LayerChoice):
    """Parameters of the cluster stage."""

    number_of_clusters: int = Field(16, ge=2, le=256, description="Distinct values kept in each clustered kernel.")
    centroid_init: Literal["kmeans_plus_plus", "density_based", "linear", "random"] = Field(
        "kmeans_plus_plus", description="How the initial centroids are placed among each kernel's weights."
    )
    per_channel: bool = Field(False, description="Cluster each output channel of a convolution on its own.")
    preserve_sparsity: Literal["auto", "true", "false"] = Field(
        "auto", description="Keep pruned zeros at zero; auto: when an earlier stage pruned the model."
    )
    epochs: int = Field(3, ge=1, le=10_000, description="Fine-tuning passes over the training split.")
    learning_rate: float = Field(3e-4, gt=0, le=10, description="Fine-tuning optimizer step size.")


class ClusterStage(Stage):
    """Weight clustering to `number_of_clusters` values per kernel, fine-tuned and stripped."""

    Config: ClassVar = ClusterParams

    def effects_after(self, incoming: frozenset[Effect]) -> frozenset[Effect]:
        """Clustered; pruned zeros stay unless preserve_sparsity=false gives them up."""
        kept = incoming - {Effect.PRUNED} if self.config.preserve_sparsity == "false" else incoming
        return kept | {Effect.CLUSTERED}

    def run(self, model: ModelArtifact | None, ctx: StageContext) -> ModelArtifact:
        import tensorflow_model_optimization as tfmot
        from tensorflow_model_optimization.python.core.clustering.keras.clustering_registry import ClusteringRegistry
        from tensorflow_model_optimization.python.core.clustering.keras.experimental import cluster

        assert model is not None  # guaranteed by `accepts`
        params: ClusterParams = self.config
        preserve = params.preserve_sparsity == "true" or (
            params.preserve_sparsity == "auto" and Effect.PRUNED in model.effects
        )
        init = tfmot.clustering.keras.CentroidInitialization[params.centroid_init.upper()]

        too_few: list[str] = []

        def supported(layer: Any) -> bool:
            if not (ClusteringRegistry.supports(layer) and layer.get_weights()):
                return False
            if not enough_weights(layer.get_weights()[0], params.number_of_clusters, preserve, params.per_channel):
                too_few.append(layer.name)
                return False
            return True

        def wrap(layer: Any) -> Any:
            return cluster.cluster_weights(
                layer, number_of_clusters=params.number_of_clusters, cluster_centroids_init=init,
                preserve_sparsity=preserve, cluster_per_channel=params.per_channel,
            )

        clustered, names = wrap_chosen(model.load_keras(), params, supported, wrap, f"stages.{ctx.name}")
        if too_few:
            ctx.log.warning("    %s left unclustered: too few %sweights for %d clusters", ", ".join(too_few),
                            "non-zero " if preserve else "", params.number_of_clusters)
        ctx.log.info("    clustering %s to %d values%s", ", ".join(names), params.number_of_clusters,
                     ", keeping zeros" if preserve else "")
        compile_model(clustered, params)
        fit(clustered, ctx, params)
        stripped = tfmot.clustering.keras.strip_clustering(clustered)
        check_clusters(stripped, names, params, ctx.name)
        facts: dict[str, Any] = {}
        if Effect.PRUNED in model.effects:
            if preserve:
                check_kept_sparsity(stripped, model.metadata, ctx.name)
            else:  # asked for: later stages must not treat the model as sparse any more
                ctx.log.warning("    preserve_sparsity=false: clustering gives up the pruned zeros")
                facts = {"target_sparsity": 0.0}
        return save_keras(
            stripped, ctx, model, effects=self.output_effects(model), number_of_clusters=params.number_of_clusters,
            clustered_layers=names, sparsity_preserved=preserve, **facts,
        )


def enough_weights(kernel: np.ndarray, clusters: int, preserve: bool, per_channel: bool) -> bool:
    """Whether TFMOT can place `clusters` centroids among `kernel`'s weights (per output channel too).

    Its k-means++ start fails when asked for more centroids than it has weights. Keeping pruned
    zeros, it reserves one centroid for zero and shares the others between the negative and the
    positive weights in proportion to their counts, so a narrow, heavily pruned layer can lack
    weights on one side; such a layer, a tiny share of the model, stays as it is.
    """
    if per_channel:
        channels = kernel.reshape(-1, kernel.shape[-1])
        return all(enough_weights(channels[:, c], clusters, preserve, False) for c in range(channels.shape[1]))
    if not preserve:
        return kernel.size >= clusters
    negative, positive = int(np.count_nonzero(kernel < 0)), int(np.count_nonzero(kernel > 0))
    if negative + positive == 0:
        return False
    negative_clusters = round((clusters - 1) * negative / (negative + positive))
    return negative >= negative_clusters and positive >= clusters - 1 - negative_clusters


def unique_values(kernel: np.ndarray, per_channel: bool) -> int:
    """The most distinct values in `kernel` (or in any one of its output channels)."""
    if not per_channel:
        return int(np.unique(kernel).size)
    channels = kernel.reshape(-1, kernel.shape[-1])
    return max(int(np.unique(channels[:, c]).size) for c in range(channels.shape[1]))


def check_clusters(model: Any, names: list[str], params: ClusterParams, stage: str) -> None:
    """Every clustered kernel holds at most `number_of_clusters` distinct values."""
    for name in names:
        found = unique_values(model.get_layer(name).get_weights()[0], params.per_channel)
        if found > params.number_of_clusters:
            raise PipelineError(
                f"stages.{stage}: layer {name} kept {found} distinct weights, more than "
                f"{params.number_of_clusters}; this layer type is not clustered correctly, add it to stages.{stage}.skip_layers"
            )


def check_kept_sparsity(model: Any, metadata: dict[str, Any], stage: str) -> None:
    """With sparsity preservation, the pruned layers are still at their target sparsity."""
    target = float(metadata.get("target_sparsity", 0.0))
    achieved = pruned_sparsity(model, metadata.get("pruned_layers"))
    if achieved < target - SPARSITY_TOLERANCE:
        raise PipelineError(
            f"stages.{stage}: clustering lowered sparsity to {achieved:.1%} from {target:.1%}; "
            f"set stages.{stage}.preserve_sparsity=true"
        )
