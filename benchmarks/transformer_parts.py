"""Where a small transformer's CPU latency goes in float32, dynamic-range and full-integer int8 TFLite.

Each part of `model=transformer`'s block (attention at the full and the halved head count, layer
normalization, the feed-forward pair, softmax and GELU alone) is built as a one-part Keras model,
converted as the quantize stage converts (techniques.conversion.convert, no sparse encoding) and
timed at batch 1 on LiteRT with one thread, every file in turn each round, so that the machine's
other load slows all of them alike:

    python benchmarks/transformer_parts.py --sequence-length 128 --dim 64
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

MODES = ("none", "dynamic", "int8")


def parts(length: int, dim: int, ff: int, heads: int) -> dict[str, tuple[tuple[int, ...], Callable[[Any], Any]]]:
    """Each part's input shape (without the batch) and how it transforms its input."""
    from tf_keras import layers

    width = dim // heads
    return {
        f"attention, {heads} heads x {width}": ((length, dim), lambda x: layers.MultiHeadAttention(heads, width)(x, x)),
        f"attention, {heads // 2} heads x {width}": ((length, dim), lambda x: layers.MultiHeadAttention(heads // 2, width)(x, x)),
        "layer normalization": ((length, dim), lambda x: layers.LayerNormalization(epsilon=1e-6)(x)),
        f"feed-forward {dim}-{ff}-{dim}, GELU": ((length, dim), lambda x: layers.Dense(dim)(layers.Dense(ff, activation="gelu")(x))),
        f"feed-forward {dim}-{ff // 2}-{dim}, GELU": (
            (length, dim), lambda x: layers.Dense(dim)(layers.Dense(ff // 2, activation="gelu")(x))
        ),
        f"softmax over {heads}x{length}x{length} scores": ((heads, length, length), lambda x: layers.Softmax()(x)),
        f"GELU on {length}x{ff}": ((length, ff), lambda x: layers.Activation("gelu")(x)),
    }


def converted(folder: Path, name: str, shape: tuple[int, ...], body: Callable[[Any], Any], rng: np.random.Generator) -> dict[str, Path]:
    """The part's TFLite file in each mode (int8 calibrated on standard-normal inputs, as layer-normed activations are)."""
    import tf_keras as keras

    from techniques.conversion import convert

    inputs = keras.Input(shape)
    model = keras.Model(inputs, body(inputs))
    calibration = rng.normal(size=(64, *shape)).astype(np.float32)
    files = {}
    for mode in MODES:
        files[mode] = folder / f"{len(list(folder.iterdir()))}_{mode}.tflite"
        files[mode].write_bytes(convert(model, mode, calibration, sparse=False))
    return files


def main() -> None:
    from pipeline.measure.litert import latency_ms

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequence-length", type=int, default=128)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--ff", type=int, default=128)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=10, help="rounds of timing; each times every file")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    folder = Path(tempfile.mkdtemp())
    shapes, files = {}, {}
    for name, (shape, body) in parts(args.sequence_length, args.dim, args.ff, args.heads).items():
        shapes[name], files[name] = shape, converted(folder, name, shape, body, rng)
    timings: dict[tuple[str, str], list[float]] = {(name, mode): [] for name in files for mode in MODES}
    for _ in range(args.rounds):
        for name, by_mode in files.items():
            sample = rng.normal(size=shapes[name]).astype(np.float32)
            for mode, path in by_mode.items():
                timings[name, mode].extend(latency_ms(path, sample, 30, warmup=3, threads=1))
    print("| part | float32 p50 ms | dynamic p50 ms | int8 p50 ms | int8 / float32 |")
    print("|---|---|---|---|---|")
    for name in files:
        p50 = {mode: float(np.median(timings[name, mode])) for mode in MODES}
        print(f"| {name} | {p50['none']:.3f} | {p50['dynamic']:.3f} | {p50['int8']:.3f} | {p50['int8'] / p50['none']:.1f}x |")


if __name__ == "__main__":
    main()
