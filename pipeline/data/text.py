"""Text: a folder of .txt files with one subfolder per class, and texts in a CSV column (see arrays.CsvSource).

The layout of Keras's `text_dataset_from_directory` (`sport/001.txt`, `tech/002.txt`, ...). The
splits are made on the texts; the tokenizer (pipeline.data.tokenizer) is then fitted on the training
split only and turns every split into int32 token ids.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
from pydantic import Field, field_validator

from pipeline.data.dataset import Dataset, SplitParams, split
from pipeline.data.tokenizer import TokenizerParams, fit, say_truncated
from pipeline.errors import PipelineError, quoted
from pipeline.plugin.fields import ExistingFolder
from pipeline.plugin.schema import Plugin

EXTENSION = ".txt"


class TextFolderParams(SplitParams, TokenizerParams):
    """Where the class folders of .txt files are, and how their texts become token ids."""

    path: ExistingFolder = Field(description="Folder with one subfolder of UTF-8 .txt files per class.")

    @field_validator("path")
    @classmethod
    def _has_class_folders(cls, path: str) -> str:
        if len(class_folders(Path(path))) < 2:
            raise ValueError(f"{path} needs at least two class subfolders of .txt files")
        return path


class TextFolderSource(Plugin[TextFolderParams]):
    """Texts read as UTF-8, classes numbered by sorted folder name, tokenized to int32 ids."""

    def load(self, seed: int) -> Dataset:
        """(sequence_length,) int32 token ids per text; class names are the folder names."""
        folders = class_folders(Path(self.config.path))
        files = [(path, label) for label, folder in enumerate(folders) for path in text_files(folder)]
        texts = np.array([read_text(path) for path, _ in files], dtype=object)
        y = np.array([label for _, label in files], dtype=np.int64)
        return tokenized(split(texts, y, self.config, seed, tuple(f.name for f in folders)), self.config)


def tokenized(data: Dataset, params: TokenizerParams) -> Dataset:
    """`data` holding texts, with a tokenizer fitted on its training split and every split as token ids."""
    tokenizer = fit(list(data.x_train), params)
    say_truncated(tokenizer, "data.sequence_length")
    encode = lambda texts: tokenizer.encode(list(texts))[0]  # noqa: E731
    return replace(data, x_train=encode(data.x_train), x_val=encode(data.x_val), x_test=encode(data.x_test), tokenizer=tokenizer)


def class_folders(root: Path) -> list[Path]:
    """The class subfolders of `root`, sorted by name (hidden ones skipped); one without .txt files is an error."""
    folders = [folder for folder in sorted(root.iterdir()) if folder.is_dir() and not folder.name.startswith(".")]
    for folder in folders:
        if not text_files(folder):
            raise PipelineError(
                f"data.path: class folder {folder} holds no {EXTENSION} files; add its texts or remove the folder"
            )
    return folders


def text_files(folder: Path) -> list[Path]:
    """The .txt files directly in `folder`, sorted, so the order (and the split) never depends on the file system."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() == EXTENSION and p.is_file())


def read_text(path: Path) -> str:
    """One text file as UTF-8 (a byte-order mark dropped); a file that is not UTF-8, or holds no text, is an error."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise PipelineError(
            f"data.path: {path} is not UTF-8 text (byte {error.object[error.start]:#04x} at position {error.start}); "
            "save it as UTF-8 or remove it"
        ) from None
    if not text.strip():
        raise PipelineError(f"data.path: {path} is empty; add its text or remove the file")
    return text


def column_texts(header: list[str], rows: list[tuple[int, list[str]]], name: str) -> np.ndarray:
    """The texts of CSV column `name`; an empty cell, or a column of numbers only, is an error."""
    at = header.index(name)
    texts = [row[at] for _, row in rows]
    for (line, _), text in zip(rows, texts):
        if not text.strip():
            raise PipelineError(f"data.text: column {quoted(name)} line {line} is empty; fill in or drop the row")
    if all(is_number(text) for text in texts):
        raise PipelineError(
            f"data.text: column {quoted(name)} holds only numbers, not text; name the text column in data.text, "
            "or leave data.text unset to use numeric columns as features"
        )
    return np.array(texts, dtype=object)


def is_number(text: str) -> bool:
    """Whether `text` reads as a number."""
    try:
        float(text)
    except ValueError:
        return False
    return True
