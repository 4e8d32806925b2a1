"""Compression benchmark: the pipeline's techniques on MNIST, checked against four targets.

    python benchmarks/compression.py --mnist /path/to/mnist10k [--quick]

The folder must hold the MNIST test set as IDX files (t10k-images-idx3-ubyte.gz and
t10k-labels-idx1-ubyte.gz). The first 8,000 images train, the last 2,000 evaluate: the script
writes them as an IDX train/test pair and runs every variant through the pipeline's own `idx`
data source and runner, so the numbers are those `python -m pipeline` would print. The stage
cache lets the variants share one trained float model. One table compares the variants with
the targets:

- int8 TFLite at most 0.27x the float32 TFLite's size, accuracy within 0.5 point of float;
- 80% pruned + int8: gzip at least 10x smaller than the float Keras model's, at most 1 point less accurate;
- QAT int8 at least as accurate as post-training int8;
- a distilled student with at most a quarter of the teacher's parameters within 1 point of the
  teacher, and more accurate than the same student trained on labels alone.
"""

from __future__ import annotations

import argparse
import gzip
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TRAIN, TEST = 8000, 2000

# Training settings shared by every variant, so that the stage cache trains the teacher once.
TRAIN_STAGE = {"epochs": 12, "batch_size": 64, "learning_rate": 0.001, "lr_decay": "cosine"}
STUDENT = {"name": "small_cnn", "width": 0.48}
# A student's accuracy moves by a few tenths of a point with its initialisation, about as much as
# distillation gains: the student comparisons are means over these seeds (one teacher each).
SEEDS = (42, 1, 2)
VARIANTS = {
    "float": {"train": TRAIN_STAGE, "quantize": {"mode": "none"}},
    "ptq_int8": {"train": TRAIN_STAGE, "quantize": {"mode": "int8", "calibration_samples": 500}},
    "pruned80_int8": {
        "train": TRAIN_STAGE,
        "prune": {"final_sparsity": 0.8, "epochs": 10, "learning_rate": 0.0005, "lr_decay": "cosine",
                  "ramp_fraction": 0.5, "batch_size": 64},
        "quantize": {"mode": "int8", "calibration_samples": 500},
    },
    "qat_int8": {"train": TRAIN_STAGE, "qat": {"epochs": 2, "learning_rate": 0.0001, "batch_size": 64}},
    "distilled": {
        "train": TRAIN_STAGE,
        "distill": {"student": STUDENT, "epochs": 20, "batch_size": 64, "lr_decay": "cosine",
                    "temperature": 10.0, "alpha": 0.9},
    },
    "student_labels_only": {"train": {**TRAIN_STAGE, "epochs": 20}},
}
QUICK = {"epochs": 1}


def write_idx(path: Path, array: np.ndarray) -> None:
    """An uncompressed IDX file: zero magic, uint8 type (0x08), rank, big-endian sizes, values."""
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    path.write_bytes(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def split_folder(mnist: Path, folder: Path) -> Path:
    """The first 8,000 images as train-*, the last 2,000 as t10k-*, for the pipeline's idx source."""
    images = gzip.decompress((mnist / "t10k-images-idx3-ubyte.gz").read_bytes())
    labels = gzip.decompress((mnist / "t10k-labels-idx1-ubyte.gz").read_bytes())
    x = np.frombuffer(images, np.uint8, offset=16).reshape(-1, 28, 28)
    y = np.frombuffer(labels, np.uint8, offset=8)
    folder.mkdir(parents=True, exist_ok=True)
    write_idx(folder / "train-images-idx3-ubyte", x[:TRAIN])
    write_idx(folder / "train-labels-idx1-ubyte", y[:TRAIN])
    write_idx(folder / "t10k-images-idx3-ubyte", x[-TEST:])
    write_idx(folder / "t10k-labels-idx1-ubyte", y[-TEST:])
    return folder


def run_variant(name: str, stages: dict, data: Path, outputs: Path, quick: bool, seed: int = 42) -> dict[str, dict[str, float]]:
    """Run one variant through the pipeline; each stage's measured metrics by stage name."""
    from hydra import compose, initialize_config_module

    from pipeline.runner import RunInfo, run

    overrides = [f"outputs={outputs}", "data=idx", f"data.path={data}", "data.val_fraction=0.1",
                 "measure.latency_runs=20", "measure.warmup_runs=3", f"seed={seed}"]
    if name == "student_labels_only":
        overrides += [f"model.width={STUDENT['width']}"]
    with initialize_config_module(config_module="recipes", version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    cfg.stages = {key: {**value, **(QUICK if quick and "epochs" in value else {})} for key, value in stages.items()}
    cfg.description = f"benchmark variant {name}"
    started = time.perf_counter()
    result = run(cfg, RunInfo(run_dir=outputs / "runs" / f"{name}_{seed}", recipe=f"benchmark_{name}"))
    print(f"  {name} (seed {seed}): {time.perf_counter() - started:.0f} s, "
          + ", ".join(f"{row.stage} {row.metrics['accuracy']:.4f}" for row in result.rows), flush=True)
    return {row.stage: row.metrics for row in result.rows}


def mean(runs: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Each stage's metrics averaged over several runs of one variant."""
    return {stage: {k: float(np.mean([r[stage][k] for r in runs])) for k in runs[0][stage]} for stage in runs[0]}


def targets(m: dict[str, dict[str, dict[str, float]]]) -> list[tuple[str, str, str, bool]]:
    """(target, measured, threshold, passed) for the four targets."""
    keras, float_tflite = m["float"]["train"], m["float"]["quantize"]
    int8, pruned = m["ptq_int8"]["quantize"], m["pruned80_int8"]["quantize"]
    qat = m["qat_int8"]["qat"]
    teacher, student, alone = m["distilled"]["train"], m["distilled"]["distill"], m["student_labels_only"]["train"]
    seeds = f"mean of {len(SEEDS)} seeds: "
    size_ratio = int8["size_bytes"] / float_tflite["size_bytes"]
    int8_drop = float_tflite["accuracy"] - int8["accuracy"]
    gzip_factor = keras["gzip_bytes"] / pruned["gzip_bytes"]
    pruned_drop = keras["accuracy"] - pruned["accuracy"]
    params_ratio = student["params"] / teacher["params"]
    student_drop = teacher["accuracy"] - student["accuracy"]
    gain = student["accuracy"] - alone["accuracy"]
    return [
        ("int8 TFLite size / float32 TFLite size",
         f"{size_ratio:.3f}x ({int8['size_bytes'] / 1024:.0f} / {float_tflite['size_bytes'] / 1024:.0f} KiB)",
         "<= 0.27x", size_ratio <= 0.27),
        ("int8 accuracy drop vs float32 TFLite",
         f"{100 * int8_drop:+.2f} pt ({int8['accuracy']:.4f} vs {float_tflite['accuracy']:.4f})", "<= 0.5 pt", int8_drop <= 0.005),
        ("80% pruned int8 gzip: float Keras gzip / pruned gzip",
         f"{gzip_factor:.1f}x ({keras['gzip_bytes'] / 1024:.0f} / {pruned['gzip_bytes'] / 1024:.0f} KiB; sparsity {pruned['sparsity']:.1%})",
         ">= 10x", gzip_factor >= 10),
        ("80% pruned int8 accuracy drop vs float Keras",
         f"{100 * pruned_drop:+.2f} pt ({pruned['accuracy']:.4f} vs {keras['accuracy']:.4f})", "<= 1 pt", pruned_drop <= 0.01),
        ("QAT int8 accuracy - PTQ int8 accuracy",
         f"{100 * (qat['accuracy'] - int8['accuracy']):+.2f} pt ({qat['accuracy']:.4f} vs {int8['accuracy']:.4f})",
         ">= 0 pt", qat["accuracy"] >= int8["accuracy"]),
        ("student params / teacher params",
         f"{params_ratio:.3f}x ({student['params']:,.0f} / {teacher['params']:,.0f})", "<= 0.25x", params_ratio <= 0.25),
        ("distilled student accuracy drop vs teacher",
         f"{100 * student_drop:+.2f} pt ({seeds}{student['accuracy']:.4f} vs {teacher['accuracy']:.4f})", "<= 1 pt", student_drop <= 0.01),
        ("distilled student - same student on labels alone",
         f"{100 * gain:+.2f} pt ({seeds}{student['accuracy']:.4f} vs {alone['accuracy']:.4f})", "> 0 pt", gain > 0),
    ]


def table(rows: list[tuple[str, str, str, bool]]) -> str:
    """A Markdown table of the targets."""
    header = ("target", "measured", "threshold", "result")
    cells = [header] + [(t, m, th, "PASS" if ok else "FAIL") for t, m, th, ok in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(4)]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, cells[1:])])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mnist", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/mnist10k")
    parser.add_argument("--outputs", type=Path, default=None, help="run folder (default: a temporary one)")
    parser.add_argument("--quick", action="store_true", help="one epoch per stage: checks the script, not the targets")
    parser.add_argument("--only", nargs="*", default=None, help="variants to run (default: all)")
    args = parser.parse_args()
    outputs = (args.outputs or Path(tempfile.mkdtemp(prefix="compression-"))).resolve()
    data = split_folder(args.mnist, outputs / "data")
    print(f"MNIST: first {TRAIN} train, last {TEST} test; outputs in {outputs}", flush=True)
    started = time.perf_counter()
    measured = {}
    for name, stages in VARIANTS.items():
        if args.only is None or name in args.only:
            seeds = SEEDS if name in ("distilled", "student_labels_only") else SEEDS[:1]
            measured[name] = mean([run_variant(name, stages, data, outputs, args.quick, seed) for seed in seeds])
    if args.only is not None:
        for name, stages in measured.items():
            print(name, {s: {k: round(v, 4) for k, v in m.items()} for s, m in stages.items()})
        return 0
    rows = targets(measured)
    print(f"\nCompression targets on MNIST ({TRAIN} train / {TEST} test), {time.perf_counter() - started:.0f} s in all:\n")
    print(table(rows))
    return 0 if all(ok for *_, ok in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
