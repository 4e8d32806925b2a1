"""Built-in text models: they take (sequence_length,) int32 token ids and output logits.

`transformer` is a BERT-like encoder (token and position embeddings, blocks of multi-head
self-attention and a feed-forward network, each with a residual and LayerNormalization, then
average pooling and a classifier); `text_cnn` is the light baseline (an embedding, one 1-D
convolution and max pooling). Both are built from tf-keras layers only, so their files load
anywhere without custom objects, and the TFLite converter keeps their id input int32.

Layer names are stable (`tokens`, `positions`, `block{i}_...`, `pooled`), so a student can be
initialised from a teacher's embeddings and blocks by name (techniques.text_distillation).
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import Field, model_validator

from pipeline.errors import PipelineError
from pipeline.models.builtin import Architecture, ModelParams, choice

POOLED = "pooled"  # the pooled hidden state the classifier reads: what hidden-state distillation aligns


class TextParams(ModelParams):
    """Parameters every built-in text model has."""

    vocab_size: int | None = Field(
        None, ge=3, le=10_000_000, description="Token ids the embedding takes (null: the data tokenizer's vocabulary size)."
    )
    dim: int = Field(64, ge=2, le=8192, description="Embedding width (before width).")


class TransformerParams(TextParams):
    """Parameters of the BERT-like encoder."""

    blocks: int = Field(2, ge=1, le=48, description="Encoder blocks (self-attention + feed-forward).")
    heads: int = Field(4, ge=1, le=64, description="Attention heads per block; each is dim / heads wide.")
    ff: int = Field(128, ge=1, le=65_536, description="Units of each block's feed-forward layer (before width).")

    @model_validator(mode="after")
    def _heads_fit(self) -> TransformerParams:
        if self.dim < self.heads:
            raise ValueError(f"dim ({self.dim}) must be at least heads ({self.heads}): each head is dim / heads wide")
        return self


T = TypeVar("T", bound=TextParams)


class TextModel(Architecture[T]):
    """Base of the text models: takes token ids and learns the vocabulary size from the data."""

    def on_data_loaded(self, data: Any) -> None:
        """Take the vocabulary size from the data's tokenizer unless the config gives one."""
        if self.config.vocab_size is None and getattr(data, "tokenizer", None) is not None:
            self.config = self.config.model_copy(update={"vocab_size": data.tokenizer.vocab_size})

    def check(self, input_shape: tuple[int, ...], num_classes: int, where: str = "model") -> None:
        """Sequences of token ids: one axis per example."""
        if len(input_shape) != 1:
            raise PipelineError(
                f"{choice(where, self.name)}: takes token ids shaped (sequence_length,) but the data gives examples of shape "
                f"{input_shape}; use text data (data=text_folder, or data=csv with data.text=COLUMN)"
            )

    @property
    def name(self) -> str:
        """The registered name of this architecture."""
        return self.config.name

    def vocabulary(self) -> int:
        """The embedding's input size; PipelineError when neither the config nor the data gave it."""
        if self.config.vocab_size is None:
            raise PipelineError(
                f"model.vocab_size: {self.name} needs the vocabulary size; use text data (data=text_folder or "
                "data=csv data.text=COLUMN), which sets it, or set model.vocab_size"
            )
        return int(self.config.vocab_size)

    def ids(self, input_shape: tuple[int, ...]) -> Any:
        """The model's int32 token-id input."""
        import tf_keras as keras

        return keras.Input(input_shape, dtype="int32", name="ids")


class Transformer(TextModel[TransformerParams]):
    """A BERT-like encoder: token + position embeddings, `blocks` x (attention + feed-forward), pooled head."""

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> Any:
        """An uncompiled tf-keras model from int32 ids to logits."""
        import tensorflow as tf
        import tf_keras as keras

        layers = keras.layers
        params, dim = self.config, self.scaled(self.config.dim)
        ids = self.ids(input_shape)
        # Position ids 0..L-1 from the input itself (integer ops the converter keeps integer).
        positions = tf.cumsum(tf.ones_like(ids), axis=1) - 1
        x = layers.Add(name="embeddings")([
            layers.Embedding(self.vocabulary(), dim, name="tokens")(ids),
            layers.Embedding(input_shape[0], dim, name="positions")(positions),
        ])
        x = layers.LayerNormalization(epsilon=1e-6, name="embeddings_norm")(x)
        for i in range(params.blocks):
            x = encoder_block(x, f"block{i}", dim, params.heads, self.scaled(params.ff), params.dropout)
        x = layers.GlobalAveragePooling1D(name=POOLED)(x)
        x = layers.Dropout(params.dropout, name="head_dropout")(x)
        return keras.Model(ids, layers.Dense(num_classes, name="classifier")(x), name="transformer")


def encoder_block(x: Any, name: str, dim: int, heads: int, ff: int, dropout: float) -> Any:
    """One post-norm encoder block (as BERT's): self-attention, add & norm, feed-forward, add & norm."""
    import tf_keras as keras

    layers = keras.layers
    attended = layers.MultiHeadAttention(heads, max(1, dim // heads), dropout=dropout, name=f"{name}_attention")(x, x)
    x = layers.LayerNormalization(epsilon=1e-6, name=f"{name}_attention_norm")(layers.Add(name=f"{name}_attention_add")([x, attended]))
    hidden = layers.Dense(ff, activation="gelu", name=f"{name}_ffn_in")(x)
    hidden = layers.Dense(dim, name=f"{name}_ffn_out")(layers.Dropout(dropout, name=f"{name}_ffn_dropout")(hidden))
    return layers.LayerNormalization(epsilon=1e-6, name=f"{name}_ffn_norm")(layers.Add(name=f"{name}_ffn_add")([x, hidden]))


class TextCNNParams(TextParams):
    """Parameters of the 1-D convolutional baseline."""

    filters: int = Field(128, ge=1, le=65_536, description="Filters of the convolution (before width).")
    kernel: int = Field(5, ge=1, le=64, description="Tokens each filter spans.")


class TextCNN(TextModel[TextCNNParams]):
    """The light baseline: token embedding, one 1-D convolution, global max pooling and a classifier."""

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> Any:
        """An uncompiled tf-keras model from int32 ids to logits."""
        import tf_keras as keras

        layers = keras.layers
        ids = self.ids(input_shape)
        x = layers.Embedding(self.vocabulary(), self.scaled(self.config.dim), name="tokens")(ids)
        x = layers.Conv1D(self.scaled(self.config.filters), self.config.kernel, activation="relu", name="conv")(x)
        x = layers.GlobalMaxPooling1D(name=POOLED)(x)
        x = layers.Dropout(self.config.dropout, name="head_dropout")(x)
        return keras.Model(ids, layers.Dense(num_classes, name="classifier")(x), name="text_cnn")
