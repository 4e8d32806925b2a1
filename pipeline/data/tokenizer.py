"""Text to int32 token ids with tf-keras `TextVectorization`, fitted on the training split only.

Why TextVectorization rather than the `tokenizers` package's WordPiece or BPE trainers: it is part of
tf-keras, which the pipeline already depends on (no new dependency), its whole state is a word list
plus four rules (standardisation, splitting, sequence length, the padding and out-of-vocabulary ids),
so an app on a phone can tokenize exactly as training did from the shipped vocabulary file, and the
same layer rebuilt from that file in `pipeline.predict` gives the very same ids. Word-level ids lose
little on topic and sentiment classification, which is what the text models here do.

Ids: 0 pads, 1 is any word outside the vocabulary, 2.. are the vocabulary's words, commonest first.
Texts longer than the sequence length keep their first tokens; the record counts how many were cut.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from pipeline.plugin.schema import Params

PAD, OOV = 0, 1
PAD_TOKEN, OOV_TOKEN = "[PAD]", "[UNK]"
Standardize = Literal["lower_and_strip_punctuation", "lower", "strip_punctuation", "none"]
log = logging.getLogger("pipeline")


class TokenizerParams(Params):
    """How texts become token ids; mixed into every source that reads text."""

    vocab_size: int = Field(
        20_000, ge=3, le=1_000_000,
        description="Most ids the tokenizer hands out, padding (0) and out-of-vocabulary (1) included.",
    )
    sequence_length: int = Field(
        128, ge=1, le=8192, description="Tokens per example: shorter texts are padded with 0, longer ones truncated (counted)."
    )
    standardize: Standardize = Field(
        "lower_and_strip_punctuation", description="Text clean-up before splitting on whitespace (none: as written)."
    )


@dataclass(frozen=True)
class Tokenizer:
    """A fitted tokenizer: its vocabulary (id 2 onwards) and rules; what an export ships beside the model."""

    vocabulary: tuple[str, ...]
    sequence_length: int
    standardize: str
    truncated: int = 0  # training texts longer than the sequence length
    examples: int = 0  # training texts it was fitted on

    @property
    def vocab_size(self) -> int:
        """Ids the model's embedding must take: the vocabulary plus padding and out-of-vocabulary."""
        return len(self.vocabulary) + 2

    def encode(self, texts: Sequence[str]) -> tuple[np.ndarray, int]:
        """Int32 ids (len(texts), sequence_length) and how many texts were truncated."""
        layer = vectorizer(self.standardize, vocabulary=list(self.vocabulary))
        return fixed_length(layer(np.asarray(texts, dtype=object)), self.sequence_length)

    def to_json(self, vocabulary_file: str | None = None) -> dict[str, Any]:
        """The rules, for the export's JSON; the words themselves go to `vocabulary_file`."""
        return {
            "library": "tf_keras.layers.TextVectorization",
            "vocabulary_file": vocabulary_file,
            "vocab_size": self.vocab_size,
            "sequence_length": self.sequence_length,
            "standardize": self.standardize,
            "split": "whitespace",
            "padding": {"id": PAD, "side": "end"},
            "truncation": "end (the first sequence_length tokens are kept)",
            "oov_id": OOV,
            "vocabulary_file_format": "one token per line; line n (from 0) is id n; line 0 is [PAD], line 1 [UNK]",
            "dtype": "int32",
        }

    def write_vocabulary(self, path: Path) -> Path:
        """The vocabulary file: one token per line, line n being id n."""
        path.write_text("".join(f"{token}\n" for token in (PAD_TOKEN, OOV_TOKEN, *self.vocabulary)), encoding="utf-8")
        return path

    @classmethod
    def from_files(cls, described: dict[str, Any], vocabulary: Path) -> Tokenizer:
        """The tokenizer an export's JSON (`described`) and vocabulary file ship."""
        tokens = vocabulary.read_text(encoding="utf-8").split("\n")[2:]
        return cls(tuple(t for t in tokens if t), int(described["sequence_length"]), str(described["standardize"]))

    def fingerprint_text(self) -> str:
        """The rules and vocabulary as text, for the data's fingerprint."""
        return f"{self.standardize}|{self.sequence_length}|" + "\n".join(self.vocabulary)


def fit(texts: Sequence[str], params: TokenizerParams) -> Tokenizer:
    """A tokenizer fitted on `texts` (the training split only: no word of the test split leaks in)."""
    layer = vectorizer(params.standardize, max_tokens=params.vocab_size)
    layer.adapt(np.asarray(texts, dtype=object), batch_size=256)
    vocabulary = tuple(str(token) for token in layer.get_vocabulary()[2:])
    _, truncated = fixed_length(layer(np.asarray(texts, dtype=object)), params.sequence_length)
    return Tokenizer(vocabulary, params.sequence_length, params.standardize, truncated, len(texts))


def vectorizer(standardize: str, **options: Any) -> Any:
    """A TextVectorization layer giving ragged int ids (cut and padded by `fixed_length`)."""
    import tf_keras as keras

    rule = None if standardize == "none" else standardize
    return keras.layers.TextVectorization(standardize=rule, split="whitespace", output_mode="int", ragged=True, **options)


def fixed_length(ragged: Any, length: int) -> tuple[np.ndarray, int]:
    """Ragged ids cut or padded (with 0, at the end) to `length`, and how many rows were cut."""
    lengths = ragged.row_lengths().numpy()
    ids = ragged[:, :length].to_tensor(default_value=PAD, shape=[len(lengths), length]).numpy()
    return ids.astype(np.int32), int(np.sum(lengths > length))


def say_truncated(tokenizer: Tokenizer, key: str) -> None:
    """Log how many training texts were longer than the sequence length (set at `key`)."""
    if tokenizer.truncated:
        share = tokenizer.truncated / max(tokenizer.examples, 1)
        log.info(
            "data: %d of %d training texts (%.0f%%) are longer than %s=%d tokens and were truncated",
            tokenizer.truncated, tokenizer.examples, 100 * share, key, tokenizer.sequence_length,
        )
    log.info("data: vocabulary of %d tokens (+ padding and out-of-vocabulary ids)", len(tokenizer.vocabulary))
