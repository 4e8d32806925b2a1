"""cluster: TFMOT weight clustering with fine-tuning, stripped before hand-off (sparsity kept after pruning)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from pipeline.errors import PipelineError
from pipeline.plugin.artifact import Effect, ModelArtifact
from pipeline.plugin.fields import Switch
from pipeline.plugin.stage import Stage, StageContext
from pipeline.run.layer_plan import Action, LayerPlan, StagePlan
from techniques.clustering import check_clusters, check_kept_sparsity, fitted_clusters, report_plan
from techniques.layers import LayerChoice, acted_on, choose_layers, kernel_share, left_alone, wrap_layers
from techniques.training import FitParams, compile_model, fit, save_keras


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
        plan = fitted_clusters(keras_model, actions, params.number_of_clusters, params.per_channel, preserve)
        names = acted_on(actions, "clustered")
        unclustered = [n for n, a in actions.items() if a.kind != "clustered"]
        report_plan(keras_model, actions, plan, params.number_of_clusters, preserve, ctx.log)
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
        compile_model(clustered, params, task=ctx.data.task)
        fit(clustered, params, ctx.data, ctx.device, seed=ctx.seed + ctx.index, log=ctx.log, name=ctx.name)
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
            stripped, model, ctx.workdir, ctx.name, ctx.log, effects=self.output_effects(model),
            metrics={"unclustered_share": kernel_share(keras_model, unclustered), **{f"clusters.{k}": float(v) for k, v in plan.items()}},
            number_of_clusters=params.number_of_clusters, clustered_layers=names, unclustered_layers=unclustered,
            clusters_per_layer=plan, sparsity_preserved=preserve, **facts,
        )

