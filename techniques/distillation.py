"""Knowledge distillation (Hinton et al., 2015): the teacher, its packed targets and the distillation loss.

With hidden-state alignment (DistilBERT's cosine loss, Sanh et al., 2019) the targets also carry
the teacher's pooled hidden state (the input of its classifier), and the student is trained
through a view that outputs its logits and its own pooled state side by side.
"""

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


def teacher_targets(teacher: Any, data: Any, hidden: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Packed (label, teacher logits[, teacher pooled state]) targets of the training and validation splits."""
    source = with_hidden_state(teacher) if hidden else teacher
    return pack(data.y_train, predict(source, data.x_train)), pack(data.y_val, predict(source, data.x_val))


def with_hidden_state(model: Any) -> Any:
    """A view of `model` (sharing its layers) that outputs its logits and then its pooled hidden state,
    the input of its last layer (the classifier), in one row per example."""
    import tf_keras as keras

    hidden = model.layers[-1].input
    return keras.Model(model.inputs, keras.layers.Concatenate(name="logits_and_hidden")([model.outputs[0], hidden]))


def hidden_width(model: Any, where: str) -> int:
    """Width of `model`'s pooled hidden state; PipelineError for a model without layers (`where` names the setting)."""
    if not hasattr(model, "layers"):
        raise PipelineError(f"{where}: an inference-only SavedModel teacher has no hidden state to align; give a Keras file or set it to 0")
    return int(model.layers[-1].input.shape[-1])


def teacher_of(model: ModelArtifact, data: Dataset, where: str, log: logging.Logger) -> tuple[Any, float]:
    """The teacher `model` was distilled from, loaded, and the distillation's temperature.

    The distill stage's artifact is the one that measured its teacher; the teacher is its
    `teacher_file`, or else the model that stage was handed (its parent in the lineage), or for an
    incoming student the model from before channel pruning. `where` is the asking stage's key (`stages.NAME`).
    """
    student = next((a for a in model.lineage() if "teacher_params" in a.metrics), None)
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
    """One target array per example: the label (a class id or a value; a multi-label row's 0/1 columns),
    then the teacher's outputs (and pooled state, when asked for)."""
    return np.concatenate([labels.astype(np.float32).reshape(len(labels), -1), teacher_logits], axis=1)


def distillation_loss(
    kind: str, alpha: float, temperature: float, classes: int | None = None, hidden_weight: float = 0.0,
    task: str = "classification", labels: int = 1,
) -> Any:
    """Per-example loss on packed targets (the first `labels` columns the label, then the teacher's outputs).

    classification, kl:  alpha * T^2 * KL(softmax(teacher/T) || softmax(student/T)) + (1 - alpha) * CE(labels, student)
    classification, mse: alpha * mean((teacher - student)^2) + (1 - alpha) * CE(labels, student)
    regression (either kind): alpha * (teacher - student)^2 + (1 - alpha) * (label - student)^2, on standardised values
    multilabel, kl: alpha * T^2 * mean over labels of BCE(sigmoid(teacher/T), student/T) + (1 - alpha) * BCE(labels, student):
    each label's soft target is the teacher's probability for it; mse compares the logits instead.
    The T^2 factor keeps the soft term's gradients on the scale of the label term's as T grows.
    With `classes` set, the first `classes` values of the outputs are the model's outputs and the
    rest pooled hidden states, and `hidden_weight * (1 - cosine(student state, teacher state))` is added.
    """
    import tensorflow as tf

    def loss(packed: Any, output: Any) -> Any:
        end = labels + classes if classes else None
        truth, teacher, student = packed[:, :labels], packed[:, labels:end], output[:, :classes]
        hard, soft = TERMS[task](kind, truth, teacher, student, temperature)
        total = alpha * soft + (1 - alpha) * hard
        if classes and hidden_weight:
            cosine = tf.reduce_sum(
                tf.math.l2_normalize(output[:, classes:], -1) * tf.math.l2_normalize(packed[:, labels + classes :], -1), axis=-1
            )
            total += hidden_weight * (1 - cosine)
        return total

    return loss


def classification_terms(kind: str, truth: Any, teacher: Any, student: Any, temperature: float) -> tuple[Any, Any]:
    """The label term (cross-entropy) and the soft term (KL of softened outputs, or MSE of logits)."""
    import tensorflow as tf
    import tf_keras as keras

    hard = keras.backend.sparse_categorical_crossentropy(tf.cast(truth[:, 0], tf.int32), student, from_logits=True)
    if kind != "kl":
        return hard, tf.reduce_mean(tf.square(teacher - student), axis=-1)
    soft_teacher = tf.nn.softmax(teacher / temperature)
    divergence = soft_teacher * (tf.nn.log_softmax(teacher / temperature) - tf.nn.log_softmax(student / temperature))
    return hard, temperature**2 * tf.reduce_sum(divergence, axis=-1)


def regression_terms(kind: str, truth: Any, teacher: Any, student: Any, temperature: float) -> tuple[Any, Any]:
    """Squared error to the label and to the teacher's output (no temperature: values are not softened)."""
    import tensorflow as tf

    return tf.reduce_mean(tf.square(truth - student), axis=-1), tf.reduce_mean(tf.square(teacher - student), axis=-1)


def multilabel_terms(kind: str, truth: Any, teacher: Any, student: Any, temperature: float) -> tuple[Any, Any]:
    """Binary cross-entropy per label to the labels, and to the teacher's softened per-label probabilities."""
    import tensorflow as tf

    hard = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=truth, logits=student), axis=-1)
    if kind != "kl":
        return hard, tf.reduce_mean(tf.square(teacher - student), axis=-1)
    soft_targets = tf.sigmoid(teacher / temperature)
    soft = tf.nn.sigmoid_cross_entropy_with_logits(labels=soft_targets, logits=student / temperature)
    # minus the targets' own entropy, so that the term is a divergence (zero when the student agrees)
    floor = tf.nn.sigmoid_cross_entropy_with_logits(labels=soft_targets, logits=teacher / temperature)
    return hard, temperature**2 * tf.reduce_mean(soft - floor, axis=-1)


TERMS = {"classification": classification_terms, "regression": regression_terms, "multilabel": multilabel_terms}


def label_width(data: Any) -> int:
    """How many packed columns the labels take: one (a class id or a value), or one per label."""
    return int(data.y_train.shape[1]) if data.y_train.ndim == 2 else 1


def accuracy_on_logits(classes: int | None = None, task: str = "classification", labels: int = 1) -> Any:
    """The packed-target metric for outputs whose first `classes` values are the model's outputs (all, when None):
    the share of examples whose top student logit is the label (the first packed column); for regression the
    absolute error to the label (standardised), for multi-label the share of labels right at probability 0.5."""
    import tensorflow as tf

    def accuracy(packed: Any, output: Any) -> Any:
        if task == "regression":
            return tf.reduce_mean(tf.abs(packed[:, :1] - output[:, :classes]), axis=-1)
        if task == "multilabel":
            right = tf.equal(packed[:, :labels] >= 0.5, output[:, :classes][:, :labels] >= 0.0)
            return tf.reduce_mean(tf.cast(right, tf.float32), axis=-1)
        labels_ = tf.cast(packed[:, 0], tf.int64)
        return tf.cast(tf.equal(labels_, tf.argmax(output[:, :classes], axis=-1)), tf.float32)

    accuracy.__name__ = "mae" if task == "regression" else "accuracy"  # Keras names the logged metric after it
    return accuracy
