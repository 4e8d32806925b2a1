"""Small real data files written into a test's tmp_path, in the formats the data sources read."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

# Real MNIST test images in IDX format, beside the checkout; tests using them skip when absent.
MNIST10K = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist10k"


def write_idx(path: Path, array: np.ndarray, compress: bool) -> Path:
    """An IDX file: magic (0, 0, 0x08 = unsigned byte, rank), big-endian sizes, then the bytes."""
    payload = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.astype(np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        payload = gzip.compress(payload)
    path.write_bytes(payload)
    return path


def idx_folder(folder: Path, prefixes=("data",), count=60, classes=3, compress=True) -> Path:
    """A folder of IDX pairs whose images encode their label (class k is brighter), so models can learn them."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix in prefixes:
        labels = np.arange(count) % classes
        images = (labels[:, None, None] * 80 + rng.integers(0, 40, (count, 6, 5))).astype(np.uint8)
        write_idx(folder / f"{prefix}-images-idx3-ubyte", images, compress)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels, compress)
    return folder


def write_csv(path: Path, count=90) -> Path:
    """Two informative features, one constant, a text label column in the middle."""
    rng = np.random.default_rng(3)
    lines = ["length,species,width,constant"]
    for i in range(count):
        k = i % 3
        lines.append(f"{10 * k + rng.normal():.3f},{['setosa', 'versicolor', 'virginica'][k]},{rng.normal():.3f},7")
    path.write_text("\n".join(lines) + "\n")
    return path


def image_tree(root: Path, sizes=((12, 10), (9, 14)), per_class=10) -> Path:
    """PNG and JPEG files in three class folders; class k is coloured in channel k."""
    import tensorflow as tf

    for k, name in enumerate(["red", "green", "blue"]):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            height, width = sizes[i % len(sizes)]
            pixels = np.full((height, width, 3), 30, np.uint8)
            pixels[..., k] = 220
            encoded = tf.io.encode_png(pixels) if i % 2 else tf.io.encode_jpeg(pixels, quality=95)
            (root / name / f"{i}.{'png' if i % 2 else 'jpg'}").write_bytes(encoded.numpy())
    (root / "notes.txt").write_text("not a class")
    return root
