"""TinyBERT-style intermediate-layer distillation (Jiao et al., 2020): the student learns the teacher's
hidden states and attention maps, block by block, besides its outputs.

Student block j is matched with teacher block `mapping[j]` (TinyBERT's uniform mapping by default:
student block j of M learns teacher block (j + 1) N / M - 1 of N, so the last blocks meet) and the
embedding outputs with each other. The loss adds, per matched pair, the mean squared error between the
hidden states (the block's output, the student's through a learned projection `W_h` when the widths
differ, as TinyBERT's) and, with `attention_weight`, between the attention probability maps (those
need equal head counts: TinyBERT matches head by head).

The teacher runs inside the training model, frozen and in inference mode, so its states are computed
batch by batch and never stored for the whole data set (attention maps are sequence_length^2 per
head). The projections exist only in the training model: the saved student has none of them.
Layers are found by the names pipeline.models.text gives them (`embeddings_norm`,
`block{i}_attention`, `block{i}_ffn_norm`), as the DistilBERT initialisation finds them.
"""

from __future__ import annotations

from typing import Any

from pipeline.errors import PipelineError
from techniques.student_init import block_count

EMBEDDINGS = "embeddings_norm"


def uniform_mapping(student_blocks: int, teacher_blocks: int) -> list[int]:
    """TinyBERT's g(m) = m N / M (1-based): student block j (0-based) learns teacher block (j + 1) N / M - 1."""
    return [(j + 1) * teacher_blocks // student_blocks - 1 for j in range(student_blocks)]


def block_output(model: Any, block: int) -> Any:
    """The symbolic output of encoder block `block` (-1: the embeddings)."""
    return model.get_layer(EMBEDDINGS if block < 0 else f"block{block}_ffn_norm").output


def attention_map(model: Any, block: int) -> Any:
    """Block `block`'s attention probabilities (batch, heads, query, key), from a second call of its attention
    layer on the block's input (the layer was called without asking for them)."""
    layer = model.get_layer(f"block{block}_attention")
    inputs = block_output(model, block - 1)
    return layer(inputs, inputs, return_attention_scores=True)[1]


def check_models(student: Any, teacher: Any, mapping: list[int], attention: bool, where: str) -> None:
    """One-line errors for models that TinyBERT-style distillation cannot match."""
    names_ok = all(hasattr(m, "layers") and EMBEDDINGS in {layer.name for layer in m.layers} for m in (student, teacher))
    have, need = block_count(teacher), block_count(student)
    if not names_ok or not have or not need:
        raise PipelineError(
            f"{where}.intermediate_weight: matching hidden states needs encoder blocks named as model=transformer names them "
            f"(embeddings_norm, block0_..., a Keras teacher); use model=transformer for both, or set {where}.intermediate_weight=0"
        )
    if len(mapping) != need or any(not 0 <= b < have for b in mapping):
        raise PipelineError(
            f"{where}.teacher_blocks: {mapping} must name {need} of the teacher's blocks 0-{have - 1}, one per student block"
        )
    if attention:
        heads = [int(student.get_layer(f"block{j}_attention").get_config()["num_heads"]) for j in range(need)]
        teacher_heads = [int(teacher.get_layer(f"block{b}_attention").get_config()["num_heads"]) for b in mapping]
        if heads != teacher_heads:
            raise PipelineError(
                f"{where}.attention_weight: attention maps are matched head by head, but the student's blocks have {heads} heads "
                f"and the teacher's matched blocks {teacher_heads}; give the student the teacher's heads or set {where}.attention_weight=0"
            )


def with_intermediate_losses(
    trained: Any, student: Any, teacher: Any, mapping: list[int], hidden_weight: float, attention_weight: float
) -> Any:
    """A training model with `trained`'s outputs (the student, or a view of it) whose loss also holds
    `hidden_weight` x the hidden-state MSEs and `attention_weight` x the attention-map MSEs against the frozen teacher."""
    import tensorflow as tf
    import tf_keras as keras

    pairs = [(-1, -1), *enumerate(mapping)]  # the embeddings, then each student block and its teacher block
    wanted = [block_output(teacher, b) for _, b in pairs]
    if attention_weight:
        wanted += [attention_map(teacher, b) for b in mapping]
    frozen = keras.Model(teacher.inputs, wanted, name="frozen_teacher")
    frozen.trainable = False
    targets = frozen(trained.inputs[0], training=False)  # inference mode: no dropout in the targets
    losses = []
    for (j, _), target in zip(pairs, targets):
        state = block_output(student, j)
        if state.shape[-1] != target.shape[-1]:  # TinyBERT's W_h: the student's state mapped to the teacher's width
            name = "embeddings" if j < 0 else f"block{j}"
            state = keras.layers.Dense(int(target.shape[-1]), use_bias=False, name=f"project_{name}")(state)
        losses.append(hidden_weight * tf.reduce_mean(tf.square(state - target)))
    for j, target in zip(range(len(mapping)), targets[len(pairs):]):
        losses.append(attention_weight * tf.reduce_mean(tf.square(attention_map(student, j) - target)))
    model = keras.Model(trained.inputs, trained.outputs, name="tinybert_training")
    model.add_loss(tf.add_n(losses))
    return model
