"""Training throughput (examples/s) for float32, mixed precision, and mixed precision + XLA.

    python benchmarks/gpu_throughput.py [--model mobilenet_v2] [--batch-size N] [--steps N] [--device auto]

Measures on whatever device `device=auto` picks (a GPU when one is visible; on a CPU-only host
it still runs, smaller by default, and says so). The model is built and compiled the way the
pipeline's training stages do it (`DeviceSetup.place_model`, `compile_model`); the data are
synthetic images held in memory, cached, repeated and prefetched, so the input pipeline is off
the critical path: the table shows its own rate beside the model's.
Mixed precision is mixed_float16 on a GPU and mixed_bfloat16 elsewhere (CPUs and TPUs have
bfloat16 units, not float16 ones).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import pipeline  # noqa: E402,F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
from pipeline.config.recipe import configure  # noqa: E402
from pipeline.device.params import DeviceParams  # noqa: E402
from pipeline.device.setup import DeviceSetup  # noqa: E402
from pipeline.plugin import registry  # noqa: E402
from techniques.training import FitParams, compile_model  # noqa: E402

CLASSES = 10


def synthetic(examples: int, side: int, batch: int) -> object:
    """An endless, cached, prefetched dataset of random images and labels, in fixed-shape batches."""
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(0)
    x = rng.random((examples, side, side, 3), dtype=np.float32)
    y = rng.integers(0, CLASSES, examples)
    data = tf.data.Dataset.from_tensor_slices((x, y)).cache().repeat().batch(batch, drop_remainder=True)
    return data.prefetch(tf.data.AUTOTUNE)


def input_rate(data: object, batch: int, steps: int) -> float:
    """Examples/s the input pipeline delivers alone (no model): it must be well above the model's."""
    iterator = iter(data)
    next(iterator)
    started = time.perf_counter()
    for _ in range(steps):
        next(iterator)
    return steps * batch / (time.perf_counter() - started)


def train_rate(args: argparse.Namespace, precision: str, xla: bool, data: object) -> float:
    """Examples/s of `fit` after warm-up steps (which include tracing and XLA compilation)."""
    setup = DeviceSetup(DeviceParams(name=args.device, precision=precision, jit_compile=xla, drop_remainder=True))
    builder = configure(registry.MODELS, {"name": args.model, "width": args.width}, "model")
    with setup.scope():
        model = setup.place_model(builder.build((args.side, args.side, 3), CLASSES))
        compile_model(model, FitParams(batch_size=args.batch_size))
    model.jit_compile = xla
    model.fit(data, steps_per_epoch=args.warmup, epochs=1, verbose=0)
    started = time.perf_counter()
    model.fit(data, steps_per_epoch=args.steps, epochs=1, verbose=0)
    return args.steps * args.batch_size / (time.perf_counter() - started)


def device_name(setup: DeviceSetup) -> str:
    """What was measured, e.g. `GPU:0 (NVIDIA H100 80GB HBM3)` or `CPU (no GPU visible)`."""
    import tensorflow as tf

    resolution = setup.resolve()
    if resolution.kind == "gpu":
        details = tf.config.experimental.get_device_details(tf.config.list_physical_devices("GPU")[0])
        return f"{resolution.devices[0]} ({details.get('device_name', 'GPU')})"
    if resolution.kind == "cpu" and not tf.config.list_physical_devices("GPU"):
        return "CPU (no GPU visible: these are CPU numbers, not GPU ones)"
    return ", ".join(resolution.devices)


def arguments(argv: list[str]) -> argparse.Namespace:
    """Command-line options; sizes default to the device (small on a CPU so it finishes quickly)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "gpu", "tpu"])
    parser.add_argument("--model", default="mobilenet_v2", help="registered model (default mobilenet_v2)")
    parser.add_argument("--width", type=float, default=1.0, help="model width multiplier")
    parser.add_argument("--side", type=int, default=32, help="image side in pixels")
    parser.add_argument("--batch-size", type=int, help="global batch (default 256 on GPU, 32 elsewhere)")
    parser.add_argument("--steps", type=int, help="timed steps (default 100 on GPU, 5 elsewhere)")
    parser.add_argument("--warmup", type=int, help="untimed steps first (default 10 on GPU, 2 elsewhere)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Measure the three configurations and print a markdown table."""
    args = arguments(sys.argv[1:] if argv is None else argv)
    probe = DeviceSetup(DeviceParams(name=args.device))
    on_gpu = probe.resolve().kind == "gpu"
    args.batch_size = args.batch_size or (256 if on_gpu else 32)
    args.steps = args.steps or (100 if on_gpu else 5)
    args.warmup = args.warmup or (10 if on_gpu else 2)
    mixed = "mixed_float16" if on_gpu else "mixed_bfloat16"
    data = synthetic(max(args.batch_size * 8, 1024), args.side, args.batch_size)
    print(f"device: {device_name(probe)}")
    print(f"model: {args.model} (width {args.width}), {args.side}x{args.side}x3 inputs, batch {args.batch_size}, "
          f"{args.steps} timed steps after {args.warmup} warm-up steps")
    print(f"input pipeline alone: {input_rate(data, args.batch_size, args.steps * 4):,.0f} examples/s\n")
    rows, base = [], None
    for label, precision, xla in (("float32", "float32", False), ("mixed", mixed, False), ("mixed + XLA", mixed, True)):
        rate = train_rate(args, precision, xla, data)
        base = base or rate
        rows.append(f"| {label:<11} | {precision:<14} | {'on' if xla else 'off':<3} | {rate:>10,.0f} | {rate / base:>7.2f}x |")
    print("| config      | policy         | XLA | examples/s | speed-up |")
    print("|-------------|----------------|-----|------------|----------|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
