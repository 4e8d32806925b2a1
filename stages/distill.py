"""distill: train a smaller student on a teacher's softened outputs (Hinton et al., 2015) and the labels."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from pipeline.artifact import ModelArtifact, ModelFormat
from pipeline.errors import PipelineError
from pipeline.models.compat import without_softmax
from pipeline.stage import Stage, StageContext
from stages._training import FitParams, compile_model, fit, save_keras


class DistillParams(FitParams):
    """Parameters of the distill stage."""

    teacher: str | None = Field(
        None, min_length=1,
        description=(
            "Teacher model file (.keras, .h5 or SavedModel); unset: the preceding stage's model, or with "
            "student=incoming the model that one was made from (e.g. the model before channel pruning)."
        ),
    )
    student: dict[str, Any] | Literal["incoming"] = Field(
        default_factory=lambda: {"name": "small_cnn", "width": 0.5},
        description=(
            "Student model config, as in the model group: {name: small_cnn, width: 0.5}; or incoming: the preceding "
            "stage's model (e.g. channel-pruned) is the student and keeps its weights."
        ),
    )
    loss: Literal["kl", "mse"] = Field(
        "kl", description="kl: T^2-scaled KL divergence of softened outputs; mse: squared error between logits."
    )
    temperature: float = Field(4.0, gt=0, le=100, description="Softens both softmaxes of the kl loss.")
    alpha: float = Field(0.7, ge=0, le=1, description="Weight of the teacher term; 1 - alpha weighs the label loss.")
    epochs: int = Field(20, ge=1, le=10_000, description="Passes over the training split.")


class DistillStage(Stage):
    """Knowledge distillation from the incoming model (or a teacher file) into a fresh student."""

    Config: ClassVar = DistillParams
    accepts: ClassVar = frozenset({None, ModelFormat.KERAS})

    def check_input(self, input_format: ModelFormat | None, earlier: Sequence[Stage], where: str) -> None:
        from pipeline import registry
        from pipeline.recipe import configure

        params: DistillParams = self.config
        if params.teacher is None and input_format is None:
            raise PipelineError(
                f"{where}.teacher: no teacher: no stage before {where} makes a model and no teacher file is set; "
                f"put a train stage first or set {where}.teacher=PATH"
            )
        if params.teacher is not None and not Path(params.teacher).exists():
            raise PipelineError(f"{where}.teacher: no such file '{params.teacher}'; give the path of a .keras, .h5 or SavedModel")
        if params.student == "incoming":
            if input_format is None:
                raise PipelineError(f"{where}.student: 'incoming' needs a model from an earlier stage; put one before {where}")
            if params.teacher is None and len(earlier) < 2:
                raise PipelineError(
                    f"{where}.teacher: with student=incoming the teacher is the model the incoming one was made from, "
                    f"but {where} follows the first stage; set {where}.teacher=PATH or add a stage such as channel_prune before it"
                )
        else:
            configure(registry.MODELS, params.student, f"{where}.student")

    def run(self, model: ModelArtifact | None, ctx: StageContext) -> ModelArtifact:
        import tf_keras as keras

        from pipeline import registry
        from pipeline.recipe import configure

        params: DistillParams = self.config
        incoming = params.student == "incoming"
        if params.teacher is not None:
            teacher_file = params.teacher
            teacher = without_softmax(keras.models.load_model(params.teacher, compile=False))
            if getattr(teacher, "softmax_removed", False):
                ctx.log.warning("    stages.%s.teacher: %s ends in a softmax; distilling from the logits before it", ctx.name, params.teacher)
        else:
            assert model is not None  # guaranteed by check_input
            source = teacher_source(model, incoming, f"stages.{ctx.name}")
            teacher_file, teacher = str(source.path), source.load_keras()
        if incoming:
            assert model is not None  # guaranteed by check_input
            student = model.load_keras()
        else:
            builder = configure(registry.MODELS, params.student, f"stages.{ctx.name}.student")
            student = ctx.device.prepare(builder.build(ctx.data.input_shape, ctx.data.num_classes))
        data = ctx.data
        targets = (pack(data.y_train, predict(teacher, data.x_train)), pack(data.y_val, predict(teacher, data.x_val)))
        teacher_accuracy = float(np.mean(np.argmax(predict(teacher, data.x_test), -1) == data.y_test))
        ctx.log.info(
            "    teacher: %d parameters, test accuracy %.4f; student: %d parameters",
            teacher.count_params(), teacher_accuracy, student.count_params(),
        )
        compile_model(
            student, params, loss=distillation_loss(params.loss, params.alpha, params.temperature),
            metrics=[packed_accuracy],
        )
        fit(student, ctx, params, targets=targets)
        teacher_facts = {"teacher_params": float(teacher.count_params()), "teacher_accuracy": teacher_accuracy}
        # An incoming student carries its earlier stages' facts (channel pruning) on; a fresh one starts anew.
        artifact = save_keras(
            student, ctx, model if incoming else None, distilled=True, teacher=teacher_file, metrics=teacher_facts
        )
        return dataclasses.replace(artifact, parent=model)


def teacher_source(model: ModelArtifact, incoming: bool, where: str) -> ModelArtifact:
    """The teacher when no file is given: the incoming model, or for an incoming student the model it was made from."""
    if not incoming:
        return model
    if model.parent is None or model.parent.format is not ModelFormat.KERAS:
        raise PipelineError(f"{where}.teacher: the incoming model was not made from a Keras model; set {where}.teacher=PATH")
    return model.parent


def predict(model: Any, x: np.ndarray) -> np.ndarray:
    """Logits of `model` for `x` (empty input gives an empty result)."""
    if not len(x):
        return np.zeros((0, model.output_shape[-1]), np.float32)
    return model.predict(x, batch_size=256, verbose=0).astype(np.float32)


def pack(labels: np.ndarray, teacher_logits: np.ndarray) -> np.ndarray:
    """One target array per example: the class id, then the teacher's logits."""
    return np.concatenate([labels.astype(np.float32)[:, np.newaxis], teacher_logits], axis=1)


def distillation_loss(kind: str, alpha: float, temperature: float) -> Any:
    """Per-example loss on packed targets.

    kl:  alpha * T^2 * KL(softmax(teacher/T) || softmax(student/T)) + (1 - alpha) * CE(labels, student)
    mse: alpha * mean((teacher - student)^2) + (1 - alpha) * CE(labels, student)
    The T^2 factor keeps the soft term's gradients on the scale of the label term's as T grows.
    """
    import tensorflow as tf
    import tf_keras as keras

    def loss(packed: Any, student: Any) -> Any:
        labels, teacher = tf.cast(packed[:, 0], tf.int32), packed[:, 1:]
        hard = keras.backend.sparse_categorical_crossentropy(labels, student, from_logits=True)
        if kind == "kl":
            soft_teacher = tf.nn.softmax(teacher / temperature)
            divergence = soft_teacher * (tf.nn.log_softmax(teacher / temperature) - tf.nn.log_softmax(student / temperature))
            soft = temperature**2 * tf.reduce_sum(divergence, axis=-1)
        else:
            soft = tf.reduce_mean(tf.square(teacher - student), axis=-1)
        return alpha * soft + (1 - alpha) * hard

    return loss


def packed_accuracy(packed: Any, student: Any) -> Any:
    """Share of examples whose top student logit is the label (the first packed column)."""
    import tensorflow as tf

    labels = tf.cast(packed[:, 0], tf.int64)
    return tf.cast(tf.equal(labels, tf.argmax(student, axis=-1)), tf.float32)


packed_accuracy.__name__ = "accuracy"
