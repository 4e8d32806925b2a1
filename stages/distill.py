"""distill: train a smaller student on a teacher's softened outputs (Hinton et al., 2015) and the labels."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from pipeline.artifact import Effect, ModelArtifact, ModelFormat
from pipeline.errors import PipelineError
from pipeline.layer_plan import LayerPlan, StagePlan
from pipeline.models.compat import build, prepared
from pipeline.models.user import load_model_file, model_file_problem
from pipeline.stage import Stage, StageContext
from stages._training import FitParams, compile_model, fit, save_keras


class DistillParams(FitParams):
    """Parameters of the distill stage."""

    teacher: str | None = Field(
        None, min_length=1, description="Teacher model file (.keras, .h5 or SavedModel); unset: the preceding stage's model."
    )
    student: dict[str, Any] = Field(
        default_factory=lambda: {"name": "small_cnn", "width": 0.5},
        description="Student model config, as in the model group: {name: small_cnn, width: 0.5}.",
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

    def effects_after(self, incoming: frozenset[Effect]) -> frozenset[Effect]:
        """The student is a new model: nothing done to the teacher carries over."""
        return frozenset()

    def check_input(self, input_format: ModelFormat | None, effects: frozenset[Effect], where: str) -> None:
        params: DistillParams = self.config
        if params.teacher is None and input_format is None:
            raise PipelineError(
                f"{where}.teacher: no teacher: no stage before {where} makes a model and no teacher file is set; "
                f"put a train stage first or set {where}.teacher=PATH"
            )
        if params.teacher is not None and not Path(params.teacher).exists():
            raise PipelineError(f"{where}.teacher: no such file '{params.teacher}'; give the path of a .keras, .h5 or SavedModel")
        problem = model_file_problem(Path(params.teacher)) if params.teacher is not None else None
        if problem:
            raise PipelineError(f"{where}.teacher: {params.teacher} {problem}")
        self.student_builder(where)

    def layer_plan(self, model: Any, earlier: LayerPlan, where: str) -> StagePlan:
        """A new student replaces the model: later stages act on its layers."""
        builder = self.student_builder(where)
        student = prepared(builder.build(tuple(model.input_shape[1:]), model.output_shape[-1]), f"{where}.student")
        return StagePlan(summary=f"trains a new {self.config.student['name']} student on the teacher's outputs", model=student)

    def student_builder(self, where: str) -> Any:
        """The configured model plugin of the student."""
        from pipeline import registry
        from pipeline.recipe import configure

        return configure(registry.MODELS, self.config.student, f"{where}.student")

    def run(self, model: ModelArtifact | None, ctx: StageContext) -> ModelArtifact:
        params: DistillParams = self.config
        if params.teacher is not None:
            teacher = prepared(load_model_file(params.teacher, f"stages.{ctx.name}.teacher"), f"stages.{ctx.name}.teacher")
            if getattr(teacher, "softmax_removed", False):
                ctx.log.warning("    stages.%s.teacher: %s ends in a softmax; distilling from the logits before it", ctx.name, params.teacher)
        else:
            assert model is not None  # guaranteed by check_input
            teacher = model.load_keras()
        student = ctx.device.prepare(build(self.student_builder(f"stages.{ctx.name}"), ctx.data))
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
        artifact = save_keras(
            student, ctx, None, effects=self.output_effects(model), metrics=teacher_facts,
            distilled=True, teacher=params.teacher or str(model.path),
        )
        return dataclasses.replace(artifact, parent=model)


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
