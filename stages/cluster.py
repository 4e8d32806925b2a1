"""cluster: TFMOT weight clustering with fine-tuning, stripped before hand-off (sparsity kept after pruning)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from pipeline.artifact import Effect, ModelArtifact
from pipeline.errors import PipelineError
from pipeline.fields import Switch
from pipeline.layer_plan import Action, LayerPlan, StagePlan
from pipeline.stage import Stage, StageContext
from stages._layers import LayerChoice, acted_on, choose_layers, kernel_share, left_alone, wrap_layers
from stages._training import FitParams, compile_model, fit, save_keras
from stages.prune import SPARSITY_TOLERANCE, pruned_sparsity


class ClusterParams(FitParams, LayerChoice):
    """Parameters of the cluster stage."""

    number_of_clusters: int = Field(16, ge=2, le=256, description="Distinct values kept in each clustered kernel.")
    centroid_init: Literal["kmeans_plus_plus", "density_based", "linear", "random"] = Field(
        "kmeans_plus_plus", description="How the initial centroids are placed among each kernel's weights."
    )
    per_channel: bool = Field(False, description="Cluster each output channel of a convolution on its own.")
    preserve_sparsity: Switch = Field(
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
    def layer_plan(self, model: Any, earlier: LayerPlan, where: str) -> StagePlan:
        """Which layers are clustered and which keep their values (and why), before any training."""
        actions = self.choose(model, where)
        keeps = " keeping pruned zeros" if self.preserves(Effect.PRUNED in earlier.effects) else ""
        summary = f"clusters to {self.config.number_of_clusters} values{keeps}; left unclustered: {left_alone(model, actions, 'clustered')}"
        return StagePlan(actions, summary)

    def choose(self, model: Any, where: str) -> dict[str, Action]:
        """`clustered` or `unclustered` with the reason, for every layer with a kernel."""
        from tensorflow_model_optimization.python.core.clustering.keras.clusterable_layer import ClusterableLayer
        from tensorflow_model_optimization.python.core.clustering.keras.clustering_registry import ClusteringRegistry

        def why_not(layer: Any) -> str | None:
            # The registry "supports" DepthwiseConv2D but lists no weight of it to cluster (TFMOT 0.8).
            supported = ClusteringRegistry.supports(layer) and bool(ClusteringRegistry._weight_names(layer))
            return None if isinstance(layer, ClusterableLayer) or supported else "not clusterable"

        return choose_layers(model, self.config, why_not, where, "clustered", "unclustered")

    def preserves(self, pruned: bool) -> bool:
        """Whether pruned zeros stay zero: asked for, or (auto) when an earlier stage pruned."""
        return self.config.preserve_sparsity == "true" or (self.config.preserve_sparsity == "auto" and pruned)

    def run(self, model: ModelArtifact | None, ctx: StageContext) -> ModelArtifact:
        import tensorflow_model_optimization as tfmot
        from tensorflow_model_optimization.python.core.clustering.keras.experimental import cluster

        assert model is not None  # guaranteed by `accepts`
        params: ClusterParams = self.config
        preserve = self.preserves(Effect.PRUNED in model.effects)
        init = tfmot.clustering.keras.CentroidInitialization[params.centroid_init.upper()]
        keras_model = model.load_keras()
        actions = self.choose(keras_model, f"stages.{ctx.name}")
        names = acted_on(actions, "clustered")
        unclustered = [n for n, a in actions.items() if a.kind != "clustered"]
        ctx.log.info("    clustering %d layers to %d values%s; left unclustered: %s", len(names), params.number_of_clusters,
                     ", keeping zeros" if preserve else "", left_alone(keras_model, actions, "clustered"))

        def wrap(layer: Any) -> Any:
            return cluster.cluster_weights(
                layer, number_of_clusters=params.number_of_clusters, cluster_centroids_init=init,
                preserve_sparsity=preserve, cluster_per_channel=params.per_channel,
            )

        clustered = wrap_layers(keras_model, names, wrap)
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
            clustered_layers=names, unclustered_layers=unclustered, sparsity_preserved=preserve,
            metrics={"unclustered_share": kernel_share(keras_model, unclustered)}, **facts,
        )


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
