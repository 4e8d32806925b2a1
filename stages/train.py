"""train: fit the configured model (or continue training the incoming one) on the training split."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from pipeline.plugin.artifact import STRUCTURAL, Effect, ModelArtifact, ModelFormat
from pipeline.plugin.stage import Stage, StageContext
from techniques.training import FitParams, compile_model, fit, save_keras


class TrainParams(FitParams):
    """Parameters of the train stage."""

    epochs: int = Field(20, ge=1, le=10_000, description="Passes over the training split.")


class TrainStage(Stage[TrainParams]):
    """Train from scratch (first stage) or keep training an incoming Keras model."""

    accepts: ClassVar = frozenset({None, ModelFormat.KERAS})

    def effects_after(self, incoming: frozenset[Effect]) -> frozenset[Effect]:
        """Plain training lets pruned weights grow back and clustered ones drift apart; the shape stays."""
        return incoming & STRUCTURAL

    def run(self, model: ModelArtifact | None, ctx: StageContext) -> ModelArtifact:
        keras_model = ctx.build_model() if model is None else model.load_keras()
        frozen = getattr(keras_model, "frozen_layers", [])
        if frozen:  # the model plugin froze its backbone for this first fit (see save_keras)
            ctx.log.info("    %s: %d backbone layers frozen; the head trains", ctx.name, len(frozen))
        compile_model(keras_model, self.config, task=ctx.data.task)
        fit(keras_model, self.config, ctx.data, ctx.device, seed=ctx.seed + ctx.index, log=ctx.log, name=ctx.name)
        return save_keras(keras_model, model, ctx.workdir, ctx.name, ctx.log, effects=self.output_effects(model))
