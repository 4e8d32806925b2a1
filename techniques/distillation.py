"""Knowledge distillation (Hinton et al., 2015): the teacher, its packed targets and the distillation loss."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from pipeline.data import Dataset
from pipeline.errors import PipelineError
from pipeline.models.compat import prepared
from pipeline.plugin.artifact import Effect, ModelArtifact


def before_channel_pruning(model: ModelArtifact, where: str) -> ModelArtifact:
    """The model that channel pruning started from, in `model`'s lineage: the teacher of an incoming student."""
    for artifact in model.lineage():
        parent = artifact.parent
        if Effect.CHANNEL_PRUNED in artifact.effects and parent is not None and Effect.CHANNEL_PRUNED not in parent.effects:
            return parent
    raise PipelineError(f"{where}.teacher: the incoming model was not channel-pruned; set {where}.teacher=PATH")


def load_teacher(path: str, data: Dataset, where: str, log: logging.Logger) -> Any:
    """The teacher file as a model to predict with: a tf-keras model (Keras 3 files rebuilt) or a SavedModel's signature.

    `where` is the config key that named the file (`stages.NAME.teacher`).
    """
    from pipeline.models.keras3 import sample_of
    from pipeline.models.savedmodel import SignatureModel, is_inference_only
    from pipeline.models.user import load_model_file

    if is_inference_only(path):
        return SignatureModel(path, where)
    sample = sample_of(data)
    teacher = prepared(load_model_file(path, where, sample=sample), where, sample)
    if getattr(teacher, "softmax_removed", False):
        log.warning("    %s: %s ends in a softmax; distilling from the logits before it", where, path)
    return teacher


def teacher_targets(teacher: Any, data: Any) -> tuple[np.ndarray, np.ndarray]:
    """Packed (label, teacher logits) targets of the training and validation splits."""
    return pack(data.y_train, predict(teacher, data.x_train)), pack(data.y_val, predict(teacher, data.x_val))


def teacher_of(model: ModelArtifact, data: Dataset, where: str, log: logging.Logger) -> tuple[Any, float]:
    """The teacher `model` was distilled from, loaded, and the distillation's temperature.

    The distill stage's artifact is the one that measured its teacher; the teacher is its
    `teacher_file`, or else the model that stage was handed (its parent in the lineage), or for an
    incoming student the model from before channel pruning. `where` is the asking stage's key (`stages.NAME`).
    """
    student = next((a for a in model.lineage() if "teacher_accuracy" in a.metrics), None)
    if student is None:
        raise PipelineError(f"{where}.teacher_alpha: the incoming model was not distilled; put a distill stage first or set it to 0")
    if student.metadata.get("teacher_file"):
        teacher = load_teacher(student.metadata["teacher_file"], data, f"{where}.teacher", log)
    else:
        assert student.parent is not None  # a distill stage without a teacher file was handed one
        source = student.parent
        if student.metadata.get("student_incoming"):
            source = before_channel_pruning(source, f"{where}.teacher_alpha")
        teacher = source.load_model()
    return teacher, float(student.metadata["temperature"])


def predict(model: Any, x: np.ndarray) -> np.ndarray:
    """Logits of `model` for `x` (an array or a streamed split, run in batches; empty input gives an
    empty result): the teacher's outputs are computed batch by batch, never for all inputs at once."""
    from pipeline.measure.metrics import keras_predict

    if not len(x):
        return np.zeros((0, model.output_shape[-1]), np.float32)
    return keras_predict(model, x)[1].astype(np.float32)


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
