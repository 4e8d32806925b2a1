"""MNIST-format IDX files: `NAME-images-idx3-ubyte[.gz]` with `NAME-labels-idx1-ubyte[.gz]`.

A folder holding a training pair (`train-...`) and a test pair (`t10k-...` or `test-...`) keeps
that split; a folder with one pair (such as MNIST's 10,000 test images alone) is split by the
configured fractions. Gzip is detected from the bytes, not the file name.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
from pydantic import Field, field_validator

from pipeline.data.dataset import Dataset, SplitParams, as_labels, given_split, pixels, split, with_channel
from pipeline.errors import PipelineError
from pipeline.plugin.fields import ExistingFolder
from pipeline.plugin.schema import Plugin

# IDX type byte -> numpy dtype (big-endian, as the format stores it).
DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
TEST_PREFIXES = ("t10k", "test")
EXPECTED = "*-images-idx3-ubyte[.gz] and *-labels-idx1-ubyte[.gz] files (MNIST IDX format)"


class IdxParams(SplitParams):
    """Where the IDX files are; how to split them."""

    path: ExistingFolder = Field(description=f"Folder holding {EXPECTED}.")

    @field_validator("path")
    @classmethod
    def _holds_idx_files(cls, path: str) -> str:
        if not image_files(Path(path)):
            raise ValueError(f"no *-images-idx3-ubyte[.gz] file in {path}")
        return path


class IdxSource(Plugin[IdxParams]):
    """Grayscale images and labels from IDX files (MNIST, Fashion-MNIST, EMNIST, ...)."""

    def load(self, seed: int) -> Dataset:
        """Images (H, W, 1) in [0, 1]; the files' own train/test split when the folder has both."""
        parts = {prefix: read_pair(images) for prefix, images in image_files(Path(self.config.path)).items()}
        tests = [p for p in parts if p.lower().startswith(TEST_PREFIXES)]
        trains = [p for p in parts if p not in tests]
        if tests and trains:
            x_train, y_train = concat(parts, trains)
            x_test, y_test = concat(parts, tests)
            return pixels(given_split(with_channel(x_train), y_train, with_channel(x_test), y_test, self.config, seed))
        x, y = concat(parts, list(parts))
        return pixels(split(with_channel(x), y, self.config, seed))


def image_files(folder: Path) -> dict[str, Path]:
    """Image files in `folder` by their name prefix (`train`, `t10k`, ...)."""
    found = {}
    for path in sorted(folder.iterdir()):
        name = path.name.removesuffix(".gz")
        for marker in ("-images-idx3-ubyte", "-images.idx3-ubyte"):
            if name.endswith(marker):
                found[name.removesuffix(marker)] = path
    return found


def read_pair(images: Path) -> tuple[np.ndarray, np.ndarray]:
    """The images of `images` and the labels of its matching labels file."""
    labels = labels_file(images)
    x, y = read_idx(images), read_idx(labels)
    if x.ndim != 3:
        raise PipelineError(f"data.path: {images} holds {x.ndim}-d data; an images file is count x rows x columns")
    if len(x) != len(y):
        raise PipelineError(f"data.path: {images} has {len(x)} images but {labels} has {len(y)} labels; use matching files")
    ids, _ = as_labels(y, f"data.path: {labels}")
    return x, ids


def labels_file(images: Path) -> Path:
    """The labels file next to an images file, gzipped or not."""
    stem = images.name.removesuffix(".gz").replace("images", "labels").replace("idx3", "idx1")
    for candidate in (images.parent / stem, images.parent / f"{stem}.gz"):
        if candidate.exists():
            return candidate
    raise PipelineError(f"data.path: {images.name} has no labels file {stem}[.gz] beside it in {images.parent}; add it")


def read_idx(path: Path) -> np.ndarray:
    """One IDX file as an array: magic (0, 0, type, rank), big-endian sizes, then the values."""
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError) as error:
        raise PipelineError(f"data.path: cannot read {path} ({error}); replace the damaged file") from None
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] not in DTYPES:
        raise PipelineError(f"data.path: {path} is not an IDX file (bad header); expected {EXPECTED}")
    rank = raw[3]
    header = 4 + 4 * rank
    shape = tuple(int(size) for size in np.frombuffer(raw[4:header], dtype=">u4"))
    dtype = np.dtype(DTYPES[raw[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(shape) != rank or len(raw) - header != expected:
        raise PipelineError(
            f"data.path: {path} is truncated or damaged ({len(raw) - header} data bytes, header says {expected}); "
            "replace the file"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def concat(parts: dict[str, tuple[np.ndarray, np.ndarray]], names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The images and labels of several prefixes, one after the other."""
    return (
        np.concatenate([parts[name][0] for name in names]),
        np.concatenate([parts[name][1] for name in names]),
    )
