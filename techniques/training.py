"""Keras training shared by every stage that fits a model (train, prune fine-tuning, ...).

`name` is the stage's name, which the log lines and errors show; `seed` the stage's own seed.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from pipeline.data import Dataset
from pipeline.device.precision import float32_copy, is_mixed
from pipeline.device.setup import DeviceSetup
from pipeline.errors import PipelineError
from pipeline.plugin.artifact import Effect, ModelArtifact, ModelFormat
from pipeline.plugin.schema import Params


class FitParams(Params):
    """How a stage fits its model; stages subclass this to change defaults or add parameters."""

    epochs: int = Field(10, ge=1, le=10_000, description="Passes over the training split.")
    batch_size: int = Field(32, ge=1, description="Examples per training step.")
    learning_rate: float = Field(1e-3, gt=0, le=10, description="Optimizer step size.")
    optimizer: Literal["adam", "sgd", "rmsprop"] = Field("adam", description="Optimizer.")
    lr_decay: Literal["none", "cosine"] = Field(
        "none", description="none keeps learning_rate; cosine lowers it towards zero by the last epoch."
    )
    steps_per_epoch: int | None = Field(
        None, ge=1, description="Training steps per epoch at most (null: one pass over the training split); "
        "for data sets too large to pass over whole, each epoch goes on where the last one stopped.",
    )


def steps_per_epoch(data: Dataset, device: DeviceSetup, params: FitParams) -> int:
    """Training steps in one epoch, as the device's batching makes them (global batch, drop_remainder),
    at most `params.steps_per_epoch`."""
    full = device.steps(len(data.x_train), params.batch_size)
    return min(full, params.steps_per_epoch or full)


def compile_model(
    model: Any, params: FitParams, loss: Any = None, metrics: list[Any] | None = None, task: str = "classification"
) -> None:
    """Compile with `task`'s loss and metric on the model's raw outputs (integer labels and logits for
    classification), unless a stage brings its own loss and metrics."""
    import tf_keras as keras

    from pipeline.measure.tasks import task_named

    optimizers = {"adam": keras.optimizers.Adam, "sgd": keras.optimizers.SGD, "rmsprop": keras.optimizers.RMSprop}
    optimizer = optimizers[params.optimizer](learning_rate=params.learning_rate)
    if is_mixed(model, ("mixed_float16",)):  # float16 gradients underflow without loss scaling
        optimizer = keras.mixed_precision.LossScaleOptimizer(optimizer)
    model.compile(
        optimizer=optimizer,
        loss=loss or task_named(task).keras_loss(),
        metrics=metrics or task_named(task).keras_metrics(),
    )


def fit(
    model: Any, params: FitParams, data: Dataset, device: DeviceSetup, *, seed: int, log: logging.Logger, name: str,
    callbacks: list[Any] | None = None, targets: tuple[Any, Any] | None = None,
) -> Any:
    """Seeded fit on the training split with per-epoch progress; fails clearly on a NaN loss.

    `targets` replaces the (train, validation) labels, for losses that need more than the class
    id (distillation packs the teacher's logits beside it).
    """
    import tf_keras as keras

    keras.utils.set_random_seed(seed)
    y_train, y_val = targets or (data.y_train, data.y_val)
    train = device.dataset(data.x_train, y_train, params.batch_size, seed=seed, cache=device.params.cache)
    train, capped = capped_epochs(train, data, device, params, log, name)
    if device.resolve().jit_compile:
        model.jit_compile = True  # resets the compiled train function, so it applies to an already compiled model
    warn_if_not_mixed(model, device, log, name)
    if device.resolve().strategy == "one_device":
        create_step_variables(model, data.x_train[:1], y_train[:1])
    history = fit_or_name_the_file(
        model, data, train,
        epochs=params.epochs,
        steps_per_epoch=capped,
        validation_data=validation_set(device, data.x_val, y_val, params.batch_size, log, name),
        verbose=0,
        callbacks=[
            *(callbacks or []), *lr_callbacks(params), *batch_norm_statistics(model, data.x_train, seed),
            epoch_logger(params.epochs, log, name), step_rate(log, name),
        ],
    )
    check_finite(model, history, name)
    warn_if_chance(history, data.y_val, log, name)
    if device.multi_worker:  # the workers' logs show that they ended with the same weights
        log.info("    %s: worker %d weights %s", name, device.role.index, weights_digest(model))
    return history


def capped_epochs(
    train: Any, data: Dataset, device: DeviceSetup, params: FitParams, log: logging.Logger, name: str,
) -> tuple[Any, int | None]:
    """The training input and Keras' `steps_per_epoch`: None for whole passes, else the cap, with
    the input repeated so that each epoch goes on where the last stopped (a finite input would run
    out after one pass, and a fresh one would start over on the same examples)."""
    steps, full = steps_per_epoch(data, device, params), device.steps(len(data.x_train), params.batch_size)
    if steps == full:
        return train, None
    log.info("    %s: %d steps per epoch of the %d a pass over the training split takes (steps_per_epoch)", name, steps, full)
    return train.repeat(), steps


def fit_or_name_the_file(model: Any, data: Dataset, train: Any, **fit_args: Any) -> Any:
    """`model.fit(train, **fit_args)`; when streamed data fails to read mid-epoch, the error names
    the file instead of a TensorFlow traceback of the input pipeline."""
    from pipeline.data.streaming import read_errors, unreadable

    try:
        return model.fit(train, **fit_args)
    except read_errors() as error:
        if not data.streams:
            raise
        raise unreadable(error, data.x_train, data.x_val) from None


# Training examples whose BatchNormalization statistics become the moving ones after each epoch:
# enough for stable means and variances (Wu and Johnson, "Rethinking Batch in BatchNorm", 2021).
STATISTICS_EXAMPLES = 4096


def batch_norm_layers(model: Any) -> list[Any]:
    """The BatchNormalization layers of `model`, also inside TFMOT's wrappers."""
    import tf_keras as keras

    found = (getattr(layer, "layer", layer) for layer in model.layers)
    return [layer for layer in found if isinstance(layer, keras.layers.BatchNormalization)]


def batch_norm_statistics(model: Any, x: Any, seed: int) -> list[Any]:
    """A callback that re-estimates BatchNormalization's moving statistics at the end of each epoch.

    keras.applications builds BatchNormalization with momentum 0.999: after a few hundred steps the
    moving statistics are still near their initial values, and inference (validation, the shipped
    model) sees the wrong scale everywhere. Measured on MobileNetV2 (alpha 0.35) trained for 8
    epochs on digits: validation accuracy 0.10 as trained, 0.89 with momentum 0.9 during training,
    0.91 with the statistics re-estimated. So after the last step of each epoch, before Keras
    validates, the moving mean and variance become the average over a sample of the training
    split of the statistics the layers compute in training mode (those of the current weights).
    Layers frozen in inference mode (`training=False` at the call, or not trainable) keep theirs.
    """
    import numpy as np
    import tf_keras as keras

    layers = batch_norm_layers(model)
    if not layers:
        return []
    from pipeline.data.streaming import is_streamed

    rng = np.random.default_rng(seed)
    # In file order: the statistics do not depend on it, and streamed rows are read in one pass down the file.
    chosen = np.sort(rng.choice(len(x), size=min(len(x), STATISTICS_EXAMPLES), replace=False))
    sample = x.subset(chosen) if is_streamed(x) else x[chosen]  # a streamed sample is decoded per epoch

    class _Reestimate(keras.callbacks.Callback):
        def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
            if batch + 1 == self.params.get("steps"):
                reestimate_statistics(self.model, layers, sample)

    return [_Reestimate()]


def reestimate_statistics(model: Any, layers: list[Any], x: Any, batch_size: int = 256) -> None:
    """Set the moving statistics of `layers` to their mean over `x` (an array or a streamed split),
    run through `model` in training mode.

    A momentum of k/(k+1) at the k-th batch (from 0) makes the moving average a plain average.
    """
    from pipeline.data.streaming import in_batches

    momenta = [layer.momentum for layer in layers]
    try:
        for k, batch in enumerate(in_batches(x, batch_size)):
            for layer in layers:
                layer.momentum = k / (k + 1)
            model(batch, training=True)
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum


def warn_if_chance(history: Any, y_val: Any, log: logging.Logger, name: str) -> None:
    """One warning when validation accuracy stays at chance while training accuracy climbs."""
    import numpy as np

    train, val = history.history.get("accuracy", []), history.history.get("val_accuracy", [])
    if not val or not len(y_val) or y_val.ndim != 1 or y_val.dtype.kind not in "iu":  # class ids only
        return
    chance = float(np.bincount(y_val.astype(int)).max() / len(y_val))  # always the commonest class
    if max(val) <= chance + 0.02 and train[-1] >= chance + 0.2:
        log.warning(
            "    %s: validation accuracy stays at chance (%.2f) while training accuracy reached %.2f: the model "
            "behaves differently in inference mode; likely causes: BatchNormalization statistics or Dropout of "
            "layers called with training=True, or validation data unlike the training data",
            name, max(val), train[-1],
        )


def create_step_variables(model: Any, x: Any, y: Any) -> None:
    """Create the optimizer's slots and the loss and metric trackers before `fit` traces its step.

    A training step that creates variables is traced twice (once creating them, once without),
    and tracing a TFMOT-wrapped model costs more than a short fine-tune's steps on small data.
    One example through the model in inference mode changes no weight and no pruning mask.
    """
    import tensorflow as tf

    logits = model(x, training=False)
    model.compiled_loss(tf.constant(y), logits)
    model.compiled_metrics.update_state(tf.constant(y), logits)
    model.reset_metrics()
    if hasattr(model.optimizer, "build"):
        model.optimizer.build(model.trainable_variables)


def weights_digest(model: Any) -> str:
    """A short hash of every weight value, to compare models across processes."""
    import hashlib

    digest = hashlib.sha256()
    for weights in model.get_weights():
        digest.update(weights.tobytes())
    return digest.hexdigest()[:16]


def validation_set(device: DeviceSetup, x: Any, y: Any, batch_size: int, log: logging.Logger, name: str) -> Any:
    """The validation split as a dataset, or None when it is empty or makes no full fixed-shape batch."""
    if not len(x):
        return None
    if device.resolve().drop_remainder and len(x) < device.global_batch(batch_size):
        log.warning("    %s: %d validation examples make no full batch; validation is skipped", name, len(x))
        return None
    return device.dataset(x, y, batch_size)


def warn_if_not_mixed(model: Any, device: DeviceSetup, log: logging.Logger, name: str) -> None:
    """Say so when a mixed precision was asked for but this model computes in float32.

    Models are stored in float32; a stage that fine-tunes an incoming model (TFMOT's wrappers
    included) trains it as stored, and only models a stage builds follow the mixed policy.
    """
    precision = device.resolve().precision
    if precision != "float32" and not is_mixed(model):
        log.warning(
            "    %s: trains in float32; device.precision=%s applies to newly built models, not to fine-tuned "
            "or TFMOT-wrapped ones", name, precision,
        )


def lr_callbacks(params: FitParams) -> list[Any]:
    """Per-epoch learning-rate decay; a late low rate recovers accuracy after pruning or clustering."""
    import tf_keras as keras

    if params.lr_decay == "none":
        return []

    def cosine(epoch: int, _: float) -> float:
        return params.learning_rate * 0.5 * (1 + math.cos(math.pi * epoch / params.epochs))

    return [keras.callbacks.LearningRateScheduler(cosine)]


def check_finite(model: Any, history: Any, name: str) -> None:
    """Fail the stage when training diverged: a NaN/inf loss or any non-finite weight.

    Diverged weights otherwise surface much later as an opaque TFLite converter or runtime error.
    """
    import numpy as np

    losses = history.history.get("loss", [])
    diverged = bool(losses) and not math.isfinite(losses[-1])
    if diverged or not all(np.isfinite(w).all() for w in model.get_weights()):
        final = losses[-1] if losses else float("nan")
        raise PipelineError(
            f"stages.{name}: training diverged (final loss {final:.4g}, non-finite weights or loss); "
            f"lower stages.{name}.learning_rate or check the data for extreme values"
        )


def save_keras(
    model: Any, parent: ModelArtifact | None, workdir: Path, name: str, log: logging.Logger, *,
    effects: frozenset[Effect], metrics: dict[str, float] | None = None, **metadata: Any,
) -> ModelArtifact:
    """Save `model` as `<workdir>/model.keras` and describe it as the artifact of stage `name`.

    `effects` is what the model has been through (the stage's `output_effects`). Metadata of
    earlier stages is carried over (a later stage learns which layers were pruned), then updated
    with this stage's facts; `metrics` are numbers about this stage's own work.
    """
    path = workdir / "model.keras"
    unfreeze(model, log, name)
    without_training_state(float32_copy(model)).save(path)
    metadata = {**(parent.metadata if parent is not None else {}), **metadata}
    return ModelArtifact(path, ModelFormat.KERAS, name, parent, metadata, effects, metrics or {})


def unfreeze(model: Any, log: logging.Logger, name: str) -> None:
    """Make the layers a model plugin froze for the first training stage trainable again.

    A backbone frozen for its first fit (`trainable_backbone: false`) lists them in
    `frozen_layers`; the saved model is handed on whole, so later stages fine-tune every layer.
    """
    names = getattr(model, "frozen_layers", None)
    if not names:
        return
    for layer in names:
        model.get_layer(layer).trainable = True
    log.info("    %s: %d backbone layers were frozen for this stage; later stages train the whole model", name, len(names))
    model.frozen_layers = []


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


def step_rate(log: logging.Logger, name: str) -> Any:
    """A Keras callback logging when the first training step is done and the step rate of the rest of
    the first epoch: where input is the bottleneck, the first shows the wait and the second the pace."""
    import time

    import tf_keras as keras

    class _StepRate(keras.callbacks.Callback):
        first: float | None = None
        _supports_tf_logs = True  # the logs stay tensors: no copy back from the device per step

        def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
            if self.first is None:
                self.first = time.perf_counter()
                log.info("    %s: first training step done", name)
            elif batch + 1 == self.params.get("steps") and batch:
                log.info("    %s: %.1f training steps/s", name, batch / (time.perf_counter() - self.first))
                self.on_train_batch_end = lambda *args, **kwargs: None  # type: ignore[method-assign]

    return _StepRate()


def epoch_logger(epochs: int, log: logging.Logger, name: str) -> Any:
    """A Keras callback logging one line per epoch, and stopping training once the loss is NaN.

    It acts at epoch ends only: a per-batch hook (Keras' TerminateOnNaN) reads the loss back
    from TensorFlow after every step, which costs more than a small model's step itself.
    """
    import tf_keras as keras

    from pipeline.run.interrupts import raise_if_interrupted

    class _EpochLog(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            logs = logs or {}
            shown = ", ".join(f"{k}={v:.4f}" for k, v in logs.items())
            log.info("    %s epoch %d/%d: %s", name, epoch + 1, epochs, shown)
            raise_if_interrupted()
            if not math.isfinite(logs.get("loss", 0.0)):
                self.model.stop_training = True  # check_finite then reports it

    return _EpochLog()
