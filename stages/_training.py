"""Keras training shared by every stage that fits a model (train, prune fine-tuning, ...)."""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field

from pipeline.artifact import ModelArtifact, ModelFormat
from pipeline.errors import PipelineError
from pipeline.schema import Params
from pipeline.stage import StageContext


class FitParams(Params):
    """How a stage fits its model; stages subclass this to change defaults or add parameters."""

    epochs: int = Field(10, ge=1, le=10_000, description="Passes over the training split.")
    batch_size: int = Field(32, ge=1, description="Examples per training step.")
    learning_rate: float = Field(1e-3, gt=0, le=10, description="Optimizer step size.")
    optimizer: Literal["adam", "sgd", "rmsprop"] = Field("adam", description="Optimizer.")
    lr_decay: Literal["none", "cosine"] = Field(
        "none", description="none keeps learning_rate; cosine lowers it towards zero by the last epoch."
    )


def steps_per_epoch(ctx: StageContext, params: FitParams) -> int:
    """Training steps in one epoch (the last batch may be partial)."""
    return math.ceil(len(ctx.data.x_train) / params.batch_size)


def compile_model(model: Any, params: FitParams, loss: Any = None, metrics: list[Any] | None = None) -> None:
    """Compile for integer labels and logit outputs, unless a stage brings its own loss and metrics."""
    import tf_keras as keras

    optimizers = {"adam": keras.optimizers.Adam, "sgd": keras.optimizers.SGD, "rmsprop": keras.optimizers.RMSprop}
    model.compile(
        optimizer=optimizers[params.optimizer](learning_rate=params.learning_rate),
        loss=loss or keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=metrics or ["accuracy"],
    )


def fit(
    model: Any, ctx: StageContext, params: FitParams, callbacks: list[Any] | None = None,
    targets: tuple[Any, Any] | None = None,
) -> Any:
    """Seeded fit on the training split with per-epoch progress; fails clearly on a NaN loss.

    `targets` replaces the (train, validation) labels, for losses that need more than the class
    id (distillation packs the teacher's logits beside it).
    """
    import tf_keras as keras

    keras.utils.set_random_seed(ctx.seed + ctx.index)
    data = ctx.data
    y_train, y_val = targets or (data.y_train, data.y_val)
    validation = (data.x_val, y_val) if len(data.x_val) else None
    history = model.fit(
        data.x_train,
        y_train,
        epochs=params.epochs,
        batch_size=params.batch_size,
        validation_data=validation,
        verbose=0,
        callbacks=[*(callbacks or []), *lr_callbacks(params), keras.callbacks.TerminateOnNaN(), epoch_logger(ctx, params.epochs)],
    )
    check_finite(model, history, ctx)
    return history


def lr_callbacks(params: FitParams) -> list[Any]:
    """Per-epoch learning-rate decay; a late low rate recovers accuracy after pruning or clustering."""
    import tf_keras as keras

    if params.lr_decay == "none":
        return []

    def cosine(epoch: int, _: float) -> float:
        return params.learning_rate * 0.5 * (1 + math.cos(math.pi * epoch / params.epochs))

    return [keras.callbacks.LearningRateScheduler(cosine)]


def check_finite(model: Any, history: Any, ctx: StageContext) -> None:
    """Fail the stage when training diverged: a NaN/inf loss or any non-finite weight.

    Diverged weights otherwise surface much later as an opaque TFLite converter or runtime error.
    """
    import numpy as np

    losses = history.history.get("loss", [])
    diverged = bool(losses) and not math.isfinite(losses[-1])
    if diverged or not all(np.isfinite(w).all() for w in model.get_weights()):
        final = losses[-1] if losses else float("nan")
        raise PipelineError(
            f"stages.{ctx.name}: training diverged (final loss {final:.4g}, non-finite weights or loss); "
            f"lower stages.{ctx.name}.learning_rate or check the data for extreme values"
        )


def save_keras(
    model: Any, ctx: StageContext, parent: ModelArtifact | None, filename: str = "model.keras", **metadata: Any
) -> ModelArtifact:
    """Save `model` as `<workdir>/<filename>` and describe it as this stage's artifact.

    Metadata of earlier stages is carried over (a later stage learns that the model was pruned
    or clustered), then updated with this stage's facts.
    """
    path = ctx.workdir / filename
    without_training_state(model).save(path)
    metadata = {**(parent.metadata if parent is not None else {}), **metadata}
    return ModelArtifact(path, ModelFormat.KERAS, ctx.name, parent, metadata)


def without_training_state(model: Any) -> Any:
    """A copy of `model` with its weights but no optimizer or metric state.

    The native .keras format has no `include_optimizer=False`; an Adam state would triple the
    file and make every size measurement of a trained model misleading.
    """
    import tf_keras as keras

    try:
        clone = keras.models.clone_model(model)
    except (ValueError, TypeError):  # subclassed models cannot be cloned from their config
        return model
    clone.set_weights(model.get_weights())
    return clone


def epoch_logger(ctx: StageContext, epochs: int) -> Any:
    """A Keras callback logging one line per epoch, so long fits show progress."""
    import tf_keras as keras

    class _EpochLog(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            shown = ", ".join(f"{k}={v:.4f}" for k, v in (logs or {}).items())
            ctx.log.info("    %s epoch %d/%d: %s", ctx.name, epoch + 1, epochs, shown)

    return _EpochLog()
