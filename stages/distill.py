"""distill: train a smaller student on a teacher's softened outputs (Hinton et al., 2015) and the labels."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from pipeline.artifact import Effect, ModelArtifact, ModelFormat
from pipeline.errors import PipelineError, quoted
from pipeline.layer_plan import LayerPlan, StagePlan
from pipeline.models import build, check_compatible, prepare, starting_format
from pipeline.models.compat import prepared
from pipeline.models.user import model_file_problem
from pipeline.stage import Stage, StageContext
from stages._training import FitParams, compile_model, fit, save_keras


class DistillParams(FitParams):
    """Parameters of the distill stage."""

    teacher: str | None = Field(
        None, min_length=1,
        description=(
            "Teacher model file (.keras or .h5, tf-keras or Keras 3, or any SavedModel); unset: the preceding "
            "stage's model, or with student=incoming the model before channel pruning."
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


class DistillStage(Stage[DistillParams]):
    """Knowledge distillation from the incoming model (or a teacher file) into a fresh student.

    The teacher only predicts, so it may be an inference-only SavedModel; the student is built
    from `student` and trained here, so that config must describe a Keras model.
    """

    Config: ClassVar = DistillParams
    accepts: ClassVar = frozenset({None, ModelFormat.KERAS, ModelFormat.SAVED_MODEL})

    def effects_after(self, incoming: frozenset[Effect]) -> frozenset[Effect]:
        """A new student has been through nothing; an incoming one stays narrow but loses its zeros and
        clusters. Either has a teacher that later fine-tuning may keep learning from."""
        kept = incoming & {Effect.CHANNEL_PRUNED} if self.config.student == "incoming" else frozenset()
        return kept | {Effect.DISTILLED}

    def check_input(self, input_format: ModelFormat | None, effects: frozenset[Effect], where: str) -> None:
        params: DistillParams = self.config
        if params.teacher is None and input_format is None:
            raise PipelineError(
                f"{where}.teacher: no teacher: no stage before {where} makes a model and no teacher file is set; "
                f"put a train stage first or set {where}.teacher=PATH"
            )
        if params.teacher is not None and not Path(params.teacher).exists():
            raise PipelineError(f"{where}.teacher: no such file {quoted(params.teacher)}; give the path of a .keras, .h5 or SavedModel")
        problem = model_file_problem(Path(params.teacher)) if params.teacher is not None else None
        if problem:
            raise PipelineError(f"{where}.teacher: {params.teacher} {problem}")
        if params.student == "incoming":
            check_incoming_student(params, input_format, effects, where)
            return
        student = self.student_builder(where)
        if starting_format(student) is ModelFormat.SAVED_MODEL:
            raise PipelineError(
                f"{where}.student: {student.config.path} is an inference-only SavedModel (a serving signature, no "
                "Keras model) and cannot be trained as the student; give a Keras model file or an architecture"
            )

    def check_data(self, data: Any, where: str) -> None:
        """A new student must take the data's examples and classes, as the recipe's model must."""
        if self.config.student == "incoming":
            return  # the incoming model was checked as the recipe's model or made by a stage for this data
        builder = self.student_builder(where)
        prepare(builder, data)
        check_compatible(builder, data, f"{where}.student")

    def layer_plan(self, model: Any, earlier: LayerPlan, where: str) -> StagePlan:
        """A new student replaces the model: later stages act on its layers. An incoming student is the model."""
        if self.config.student == "incoming":
            return StagePlan(summary="trains the incoming model as the student on the teacher's outputs")
        builder = self.student_builder(where)
        student = prepared(builder.build(tuple(model.input_shape[1:]), model.output_shape[-1]), f"{where}.student")
        return StagePlan(summary=f"trains a new {self.config.student['name']} student on the teacher's outputs", model=student)

    def student_builder(self, where: str) -> Any:
        """The configured model plugin of the student."""
        from pipeline import registry
        from pipeline.recipe import configure

        assert not isinstance(self.config.student, str)  # "incoming" is the only string it takes
        return configure(registry.MODELS, self.config.student, f"{where}.student")

    def run(self, model: ModelArtifact | None, ctx: StageContext) -> ModelArtifact:
        params: DistillParams = self.config
        incoming = params.student == "incoming"
        if params.teacher is not None:
            teacher_file, teacher = params.teacher, load_teacher(params.teacher, ctx)
        else:
            assert model is not None  # guaranteed by check_input
            source = before_channel_pruning(model, f"stages.{ctx.name}") if incoming else model
            teacher_file, teacher = str(source.path), source.load_model()
        if incoming:
            assert model is not None  # guaranteed by check_input
            student = model.load_keras()
        else:
            builder = self.student_builder(f"stages.{ctx.name}")
            prepare(builder, ctx.data)
            student = ctx.device.prepare(build(builder, ctx.data, f"stages.{ctx.name}.student"))
        data = ctx.data
        targets = teacher_targets(teacher, data)
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
        # An incoming student carries its earlier stages' facts (which channels stayed) on; a new one starts anew.
        artifact = save_keras(
            student, ctx, model if incoming else None, effects=self.output_effects(model), metrics=teacher_facts,
            distilled=True, teacher=teacher_file, teacher_file=params.teacher, student_incoming=incoming,
            temperature=params.temperature,
        )
        return dataclasses.replace(artifact, parent=model)


def check_incoming_student(params: DistillParams, input_format: ModelFormat | None, effects: frozenset[Effect], where: str) -> None:
    """student=incoming trains the incoming Keras model; without a teacher file, channel pruning must come first."""
    if input_format is not ModelFormat.KERAS:
        got = "no model" if input_format is None else f"a {input_format.value} model"
        raise PipelineError(f"{where}.student: 'incoming' trains the incoming Keras model, but {where} gets {got}; "
                            "put a stage that makes a Keras model first")
    if params.teacher is None and Effect.CHANNEL_PRUNED not in effects:
        raise PipelineError(
            f"{where}.teacher: with student=incoming the teacher is the model before channel pruning, but no stage "
            f"before {where} prunes channels; set {where}.teacher=PATH or put a channel_prune stage first"
        )


def before_channel_pruning(model: ModelArtifact, where: str) -> ModelArtifact:
    """The model that channel pruning started from, in `model`'s lineage: the teacher of an incoming student."""
    for artifact in model.lineage():
        parent = artifact.parent
        if Effect.CHANNEL_PRUNED in artifact.effects and parent is not None and Effect.CHANNEL_PRUNED not in parent.effects:
            return parent
    raise PipelineError(f"{where}.teacher: the incoming model was not channel-pruned; set {where}.teacher=PATH")


def load_teacher(path: str, ctx: StageContext) -> Any:
    """The teacher file as a model to predict with: a tf-keras model (Keras 3 files rebuilt) or a SavedModel's signature."""
    from pipeline.models.keras3 import sample_of
    from pipeline.models.user import load_model_file
    from pipeline.savedmodel import SignatureModel, is_inference_only

    where = f"stages.{ctx.name}.teacher"
    if is_inference_only(path):
        return SignatureModel(path, where)
    sample = sample_of(ctx.data)
    teacher = prepared(load_model_file(path, where, sample=sample), where, sample)
    if getattr(teacher, "softmax_removed", False):
        ctx.log.warning("    %s: %s ends in a softmax; distilling from the logits before it", where, path)
    return teacher


def teacher_targets(teacher: Any, data: Any) -> tuple[np.ndarray, np.ndarray]:
    """Packed (label, teacher logits) targets of the training and validation splits."""
    return pack(data.y_train, predict(teacher, data.x_train)), pack(data.y_val, predict(teacher, data.x_val))


def teacher_of(model: ModelArtifact, ctx: StageContext) -> tuple[Any, float]:
    """The teacher `model` was distilled from, loaded, and the distillation's temperature.

    The distill stage's artifact is the one that measured its teacher; the teacher is its
    `teacher_file`, or else the model that stage was handed (its parent in the lineage), or for an
    incoming student the model from before channel pruning.
    """
    where = f"stages.{ctx.name}"
    student = next((a for a in model.lineage() if "teacher_accuracy" in a.metrics), None)
    if student is None:
        raise PipelineError(f"{where}.teacher_alpha: the incoming model was not distilled; put a distill stage first or set it to 0")
    if student.metadata.get("teacher_file"):
        teacher = load_teacher(student.metadata["teacher_file"], ctx)
    else:
        assert student.parent is not None  # a distill stage without a teacher file was handed one
        source = student.parent
        if student.metadata.get("student_incoming"):
            source = before_channel_pruning(source, f"{where}.teacher_alpha")
        teacher = source.load_model()
    return teacher, float(student.metadata["temperature"])


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
