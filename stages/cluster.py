"""cluster: TFMOT weight clustering with fine-tuning, stripped before hand-off (sparsity kept after pruning)."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import Field

from pipeline.errors import PipelineError
from pipeline.plugin.artifact import Effect, ModelArtifact
from pipeline.plugin.fields import Switch
from pipeline.plugin.stage import Stage, StageContext
from pipeline.run.layer_plan import Action, LayerPlan, StagePlan
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


class ClusterStage(Stage[ClusterParams]):
    """Weight clustering to `number_of_clusters` values per kernel, fine-tuned and stripped."""

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
        from pipeline.private_api import clusterable

        def why_not(layer: Any) -> str | None:
            return None if clusterable(layer) else "not clusterable"

        return choose_layers(model, self.config, why_not, where, "clustered", "unclustered")

    def preserves(self, pruned: bool) -> bool:
        """Whether pruned zeros stay zero: asked for, or (auto) when an earlier stage pruned."""
        return self.config.preserve_sparsity == "true" or (self.config.preserve_sparsity == "auto" and pruned)

    def run(self, model: ModelArtifact | None, ctx: StageContext) -> ModelArtifact:
        import tensorflow_model_optimization as tfmot

        from pipeline.private_api import cluster_weights

        assert model is not None  # guaranteed by `accepts`
        params = self.config
        preserve = self.preserves(Effect.PRUNED in model.effects)
        init = tfmot.clustering.keras.CentroidInitialization[params.centroid_init.upper()]
        keras_model = model.load_keras()
        actions = self.choose(keras_model, f"stages.{ctx.name}")
        plan = fitted_clusters(keras_model, actions, params, preserve)
        names = acted_on(actions, "clustered")
        unclustered = [n for n, a in actions.items() if a.kind != "clustered"]
        report_plan(keras_model, actions, plan, params.number_of_clusters, preserve, ctx)
        if not names:
            raise PipelineError(
                f"stages.{ctx.name}.number_of_clusters: no chosen layer has enough distinct weights to cluster; "
                f"cluster before pruning or choose other layers with stages.{ctx.name}.layers"
            )

        def wrap(layer: Any) -> Any:
            return cluster_weights(
                layer, number_of_clusters=plan[layer.name], cluster_centroids_init=init,
                preserve_sparsity=preserve, cluster_per_channel=params.per_channel,
            )

        clustered = wrap_layers(keras_model, names, wrap)
        compile_model(clustered, params)
        fit(clustered, ctx, params)
        stripped = tfmot.clustering.keras.strip_clustering(clustered)
        check_clusters(stripped, plan, params.per_channel, ctx.name)
        facts: dict[str, Any] = {}
        if Effect.PRUNED in model.effects:
            if preserve:
                check_kept_sparsity(stripped, model.metadata, ctx.name)
            else:  # asked for: later stages must not treat the model as sparse any more
                ctx.log.warning("    preserve_sparsity=false: clustering gives up the pruned zeros")
                facts = {"target_sparsity": 0.0}
        return save_keras(
            stripped, ctx, model, effects=self.output_effects(model),
            metrics={"unclustered_share": kernel_share(keras_model, unclustered), **{f"clusters.{k}": float(v) for k, v in plan.items()}},
            number_of_clusters=params.number_of_clusters, clustered_layers=names, unclustered_layers=unclustered,
            clusters_per_layer=plan, sparsity_preserved=preserve, **facts,
        )


def unique_values(kernel: np.ndarray, per_channel: bool) -> int:
    """The most distinct values in `kernel` (or in any one of its output channels)."""
    if not per_channel:
        return int(np.unique(kernel).size)
    channels = kernel.reshape(-1, kernel.shape[-1])
    return max(int(np.unique(channels[:, c]).size) for c in range(channels.shape[1]))


def check_clusters(model: Any, plan: dict[str, int], per_channel: bool, stage: str) -> None:
    """Every clustered kernel holds at most the distinct values its layer was given."""
    for name, clusters in plan.items():
        found = unique_values(model.get_layer(name).get_weights()[0], per_channel)
        if clusters and found > clusters:
            raise PipelineError(
                f"stages.{stage}: layer {name} kept {found} distinct weights, more than "
                f"{clusters}; this layer type is not clustered correctly, add it to stages.{stage}.skip_layers"
            )


def layer_kernel(layer: Any) -> np.ndarray | None:
    """The weight clustering acts on (a kernel), or None for layers such as RNNs that hold several."""
    weights = layer.get_weights()
    return weights[0] if weights and weights[0].ndim >= 2 else None


def clusters_for(kernel: np.ndarray | None, wanted: int, per_channel: bool, preserve: bool) -> int:
    """The most clusters, up to `wanted`, that `kernel` can hold; 0 when it is too small to cluster.

    A kernel (or, per channel, each output channel) must have at least as many distinct values
    as clusters. Keeping zeros, TFMOT reserves one centroid for zero and shares the rest between
    the negative and positive weights in proportion to their counts; each side must then hold
    its share. TFMOT needs at least 2 clusters (3 when zeros are kept).
    """
    if kernel is None:
        return wanted
    groups = kernel.reshape(-1, kernel.shape[-1]).T if per_channel and kernel.ndim == 4 else [kernel.ravel()]
    fewest = 3 if preserve else 2
    for clusters in range(wanted, fewest - 1, -1):
        if all(holds(values, clusters, preserve) for values in groups):
            return clusters
    return 0


def holds(values: np.ndarray, clusters: int, preserve: bool) -> bool:
    """Whether TFMOT's centroid initialisation can place `clusters` centroids among `values`."""
    if not preserve:
        return np.unique(values).size >= clusters
    negative, positive = values[values < 0], values[values > 0]
    if not negative.size + positive.size:
        return False
    # As TFMOT splits them: round((clusters - 1) * share of negatives), both rounding half to even.
    on_negative = int(np.round((clusters - 1) * negative.size / (negative.size + positive.size)))
    return np.unique(negative).size >= on_negative and np.unique(positive).size >= clusters - 1 - on_negative


def fitted_clusters(model: Any, actions: dict[str, Action], params: ClusterParams, preserve: bool) -> dict[str, int]:
    """The clusters each layer chosen for clustering gets: what its kernel can hold, up to the number asked for.

    k-means++ seeding fails outright when a kernel holds fewer distinct weights than the clusters
    asked for (after heavy pruning, or per channel); such a layer gets what it can hold, and one
    that can hold too few is marked `unclustered` in `actions`.
    """
    plan = {}
    for name in acted_on(actions, "clustered"):
        plan[name] = clusters_for(layer_kernel(model.get_layer(name)), params.number_of_clusters, params.per_channel, preserve)
        if not plan[name]:
            actions[name] = Action("unclustered", "too few distinct weights")
    return plan


def report_plan(
    model: Any, actions: dict[str, Action], plan: dict[str, int], wanted: int, preserve: bool, ctx: StageContext
) -> None:
    """Log how many layers are clustered, which are left unclustered (why, and their share of the
    weights), and which get fewer clusters than asked for."""
    clustered = acted_on(actions, "clustered")
    ctx.log.info("    clustering %d layers to %d values%s; left unclustered: %s", len(clustered), wanted,
                 ", keeping zeros" if preserve else "", left_alone(model, actions, "clustered"))
    for name, n in plan.items():
        if 0 < n < wanted:
            ctx.log.warning("    %s: too few distinct weights for %d clusters; clustered to %d", name, wanted, n)


def check_kept_sparsity(model: Any, metadata: dict[str, Any], stage: str) -> None:
    """With sparsity preservation, the pruned layers are still at their target sparsity."""
    target = float(metadata.get("target_sparsity", 0.0))
    achieved = pruned_sparsity(model, metadata.get("pruned_layers"))
    if achieved < target - SPARSITY_TOLERANCE:
        raise PipelineError(
            f"stages.{stage}: clustering lowered sparsity to {achieved:.1%} from {target:.1%}; "
            f"set stages.{stage}.preserve_sparsity=true"
        )
