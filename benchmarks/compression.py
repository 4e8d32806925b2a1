"""Compression benchmark: every technique of the pipeline on MNIST, one table, four targets.

    python benchmarks/compression.py --mnist /path/to/mnist10k [--quick] [--only VARIANT ...]

The folder must hold the MNIST test set as IDX files (t10k-images-idx3-ubyte.gz and
t10k-labels-idx1-ubyte.gz). The first 8,000 images train, the last 2,000 evaluate: the script
writes them as an IDX train/test pair and runs every variant through the pipeline's own `idx`
data source and runner, so the numbers are those `python -m pipeline` would print. The stage
cache lets the variants share one trained float model and one pruned model per sparsity.

It prints (and writes to the outputs folder as compression.md and compression.png):
- the compression table: size, gzip size, accuracy and p50 latency at batch 1 on one thread of
  float Keras, float TFLite, dynamic range, float16, int8, QAT int8, 50%/80% pruned, clustered,
  2:4 sparse and distilled models, with and without int8;
- the targets: int8 TFLite at most 0.27x the float32 TFLite's size, accuracy within 0.5 point of
  float; 80% pruned + int8 gzip at least 10x smaller than the float Keras model's, at most 1 point
  less accurate; QAT int8 at least as accurate as post-training int8; a distilled student with at
  most a quarter of the teacher's parameters within 1 point of the teacher, and more accurate than
  the same student trained on labels alone; the record recipe (recipes/recipe/smallest_mnist.yaml,
  every technique composed) at least 50x smaller in gzip than its float teacher's Keras file, at
  most 1 point less accurate.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TRAIN, TEST = 8000, 2000

# Training settings shared by every variant, so that the stage cache trains the float model once.
TRAIN_STAGE = {"epochs": 12, "batch_size": 64, "learning_rate": 0.001, "lr_decay": "cosine"}
FINE_TUNE = {"batch_size": 64, "learning_rate": 0.0005, "lr_decay": "cosine"}
PRUNE = {**FINE_TUNE, "epochs": 10, "ramp_fraction": 0.5}
SPARSE_24 = {**FINE_TUNE, "epochs": 10, "m_by_n": [2, 4], "schedule": "constant"}
CLUSTER = {"number_of_clusters": 16, "epochs": 3, "batch_size": 64}
FLOAT, INT8 = {"mode": "none"}, {"mode": "int8", "calibration_samples": 500}
STUDENT_WIDTH = 0.48
DISTILL = {**FINE_TUNE, "learning_rate": 0.001, "epochs": 40, "temperature": 4.0, "alpha": 0.9,
           "student": {"name": "small_cnn", "width": STUDENT_WIDTH}}
# A student's accuracy moves by a few tenths of a point with its initialisation, about as much as
# distillation gains: the student comparisons are means over these seeds (one teacher each).
SEEDS = (42, 1, 2)
# The record recipe as shipped (its teacher and student are the distilled variant's, from the cache).
RECORD = yaml.safe_load((Path(__file__).resolve().parents[1] / "recipes/recipe/smallest_mnist.yaml").read_text())["stages"]
# The record with int4 weights (quantization-aware), and its budget (its teacher is RECORD's, from the cache).
RECORD_INT4 = yaml.safe_load((Path(__file__).resolve().parents[1] / "recipes/recipe/smallest_mnist_int4.yaml").read_text())


@dataclasses.dataclass(frozen=True)
class Variant:
    """One pipeline run: its stages, changes to the model config, and the seeds it runs with."""

    stages: dict
    model: dict = dataclasses.field(default_factory=dict)
    seeds: tuple[int, ...] = SEEDS[:1]
    overrides: tuple[str, ...] = ()


VARIANTS = {
    "float": Variant({"train": TRAIN_STAGE, "quantize": FLOAT}),
    "dynamic": Variant({"train": TRAIN_STAGE, "quantize": {"mode": "dynamic"}}),
    "float16": Variant({"train": TRAIN_STAGE, "quantize": {"mode": "float16"}}),
    "ptq_int8": Variant({"train": TRAIN_STAGE, "quantize": INT8}),
    "qat_int8": Variant({"train": TRAIN_STAGE, "qat": {"epochs": 2, "learning_rate": 0.0001, "batch_size": 64}}),
    "pruned50": Variant({"train": TRAIN_STAGE, "prune": {**PRUNE, "final_sparsity": 0.5}, "quantize": FLOAT}),
    "pruned50_int8": Variant({"train": TRAIN_STAGE, "prune": {**PRUNE, "final_sparsity": 0.5}, "quantize": INT8}),
    "pruned80": Variant({"train": TRAIN_STAGE, "prune": {**PRUNE, "final_sparsity": 0.8}, "quantize": FLOAT}),
    "pruned80_int8": Variant({"train": TRAIN_STAGE, "prune": {**PRUNE, "final_sparsity": 0.8}, "quantize": INT8}),
    "clustered": Variant({"train": TRAIN_STAGE, "cluster": CLUSTER, "quantize": FLOAT}),
    "clustered_int8": Variant({"train": TRAIN_STAGE, "cluster": CLUSTER, "quantize": INT8}),
    "sparse24": Variant({"train": TRAIN_STAGE, "prune": SPARSE_24, "quantize": FLOAT}),
    "sparse24_int8": Variant({"train": TRAIN_STAGE, "prune": SPARSE_24, "quantize": INT8}),
    # Soft targets carry more than the labels only from a teacher that has not memorised the
    # training split: the teacher trains with dropout, the student (as its labels-only twin) without.
    "distilled": Variant({"train": TRAIN_STAGE, "distill": DISTILL, "quantize": INT8}, {"dropout": 0.5}, SEEDS),
    "student_labels_only": Variant(
        {"train": {**TRAIN_STAGE, "epochs": DISTILL["epochs"]}}, {"width": STUDENT_WIDTH}, SEEDS
    ),
    "smallest_mnist": Variant(RECORD, {"dropout": 0.5}),
    "smallest_mnist_int4": Variant(
        RECORD_INT4["stages"], {"dropout": 0.5}, overrides=(f"budget.accuracy_drop={RECORD_INT4['budget']['accuracy_drop']}",)
    ),
}
# (row label, variant, stage) of the compression table.
ROWS = [
    ("float32 Keras", "float", "train"),
    ("float32 TFLite", "float", "quantize"),
    ("dynamic range", "dynamic", "quantize"),
    ("float16", "float16", "quantize"),
    ("int8 post-training", "ptq_int8", "quantize"),
    ("int8 quantization-aware", "qat_int8", "qat"),
    ("50% pruned", "pruned50", "quantize"),
    ("50% pruned + int8", "pruned50_int8", "quantize"),
    ("80% pruned", "pruned80", "quantize"),
    ("80% pruned + int8", "pruned80_int8", "quantize"),
    ("clustered, 16 values", "clustered", "quantize"),
    ("clustered + int8", "clustered_int8", "quantize"),
    ("2:4 sparse", "sparse24", "quantize"),
    ("2:4 sparse + int8", "sparse24_int8", "quantize"),
    ("distilled student, Keras", "distilled", "distill"),
    ("distilled student + int8", "distilled", "quantize"),
    ("student on labels alone, Keras", "student_labels_only", "train"),
    ("smallest_mnist recipe: distilled, pruned, clustered, PCQAT int8", "smallest_mnist", "qat"),
    ("smallest_mnist_int4 recipe: distilled (0.35), pruned 70%, int4 QAT", "smallest_mnist_int4", "qat"),
]
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


Metrics = dict[str, dict[str, float]]  # stage name -> its measured metrics


def run_variant(name: str, variant: Variant, seed: int, data: Path, outputs: Path, quick: bool) -> Metrics:
    """Run one variant through the pipeline; each stage's measured metrics by stage name."""
    from hydra import compose, initialize_config_module

    from pipeline.run.runner import RunInfo, run

    overrides = [f"outputs={outputs}", "data=idx", f"data.path={data}", "data.val_fraction=0.1", f"seed={seed}"]
    overrides += [f"++model.{key}={value}" for key, value in variant.model.items()] + list(variant.overrides)
    with initialize_config_module(config_module="recipes", version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    cfg.stages = {stage: {**params, **(QUICK if quick and "epochs" in params else {})} for stage, params in variant.stages.items()}
    cfg.description = f"benchmark variant {name}"
    started = time.perf_counter()
    result = run(cfg, RunInfo(run_dir=outputs / "runs" / f"{name}_{seed}", recipe=f"benchmark_{name}"))
    print(f"  {name} (seed {seed}): {time.perf_counter() - started:.0f} s, "
          + ", ".join(f"{row.stage} {row.metrics['accuracy']:.4f}" for row in result.rows), flush=True)
    return {row.stage: row.metrics for row in result.rows}


def mean(runs: list[Metrics]) -> Metrics:
    """Each stage's metrics averaged over several runs of one variant."""
    return {stage: {k: float(np.mean([r[stage][k] for r in runs])) for k in runs[0][stage]} for stage in runs[0]}


def markdown(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    """A Markdown table, columns padded to their widest cell."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    line = lambda row: "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def compression_table(m: dict[str, Metrics]) -> str:
    """Every variant's size, gzip size, accuracy and latency, next to the float Keras model's."""
    keras = m["float"]["train"]
    rows = []
    for label, variant, stage in ROWS:
        if variant in m:
            x = m[variant][stage]
            seeds = f" (mean of {len(VARIANTS[variant].seeds)} seeds)" if len(VARIANTS[variant].seeds) > 1 else ""
            rows.append((
                label + seeds, f"{x['params']:,.0f}", f"{x['size_bytes'] / 1024:.0f}", f"{x['gzip_bytes'] / 1024:.1f}",
                f"{keras['gzip_bytes'] / x['gzip_bytes']:.1f}x", f"{x['sparsity']:.0%}", f"{x['accuracy']:.4f}",
                f"{100 * (x['accuracy'] - keras['accuracy']):+.2f}", f"{x['latency_p50_ms']:.3f}",
            ))
    header = ("model", "params", "size KiB", "gzip KiB", "gzip smaller", "sparsity", "accuracy", "vs float pt", "p50 ms")
    return markdown(header, rows)


def tutorial_comparison(m: dict[str, Metrics]) -> str:
    """The TFMOT pruning tutorial's headline next to what the pipeline reached on this split."""
    keras, pruned, pruned_int8 = m["float"]["train"], m["pruned80"]["quantize"], m["pruned80_int8"]["quantize"]
    factor = lambda x: keras["gzip_bytes"] / x["gzip_bytes"]  # noqa: E731
    drop = lambda x: 100 * (x["accuracy"] - keras["accuracy"])  # noqa: E731
    return (f"TFMOT pruning tutorial: 3x smaller (gzip) from pruning, 10x with pruning + int8, accuracy kept. "
            f"Here, 80% pruning: {factor(pruned):.1f}x ({drop(pruned):+.2f} pt), "
            f"with int8: {factor(pruned_int8):.1f}x ({drop(pruned_int8):+.2f} pt).")


def targets(m: dict[str, Metrics]) -> list[tuple[str, str, str, bool]]:
    """(target, measured, threshold, passed) for each target."""
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
         f"{gzip_factor:.1f}x ({keras['gzip_bytes'] / 1024:.0f} / {pruned['gzip_bytes'] / 1024:.0f} KiB; "
         f"sparsity {pruned['sparsity']:.1%})",
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
        *record_targets("smallest_mnist", m["smallest_mnist"]["train"], m["smallest_mnist"]["qat"], 50),
        *record_targets("smallest_mnist_int4", m["smallest_mnist_int4"]["train"], m["smallest_mnist_int4"]["qat"], 100),
    ]


def record_targets(name: str, teacher: dict[str, float], shipped: dict[str, float], factor: float) -> list[tuple[str, str, str, bool]]:
    """A record recipe's two targets: gzip `factor` times smaller than its teacher's Keras file, within a point of it."""
    ratio = teacher["gzip_bytes"] / shipped["gzip_bytes"]
    drop = teacher["accuracy"] - shipped["accuracy"]
    return [
        (f"{name}: teacher Keras gzip / shipped TFLite gzip",
         f"{ratio:.1f}x ({teacher['gzip_bytes'] / 1024:.0f} / {shipped['gzip_bytes'] / 1024:.1f} KiB)", f">= {factor:.0f}x",
         ratio >= factor),
        (f"{name} accuracy drop vs its teacher",
         f"{100 * drop:+.2f} pt ({shipped['accuracy']:.4f} vs {teacher['accuracy']:.4f})", "<= 1 pt", drop <= 0.01),
    ]


def plot(m: dict[str, Metrics], path: Path) -> Path:
    """Accuracy against gzip size of every table row, with the Pareto front."""
    from pipeline.commands.report import RunPoint
    from pipeline.commands.report import plot as pareto_plot

    points = [
        RunPoint(label, label, {}, {**m[variant][stage], "gzip_kib": m[variant][stage]["gzip_bytes"] / 1024})
        for label, variant, stage in ROWS if variant in m
    ]
    return pareto_plot(points, "gzip_kib", "gzip size (KiB)", path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mnist", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/mnist10k")
    parser.add_argument("--outputs", type=Path, default=None, help="run folder (default: a temporary one)")
    parser.add_argument("--quick", action="store_true", help="one epoch per stage: checks the script, not the targets")
    parser.add_argument("--only", nargs="*", choices=sorted(VARIANTS), default=None, help="variants to run (default: all)")
    args = parser.parse_args()
    outputs = (args.outputs or Path(tempfile.mkdtemp(prefix="compression-"))).resolve()
    data = split_folder(args.mnist, outputs / "data")
    print(f"MNIST: first {TRAIN} train, last {TEST} test; outputs in {outputs}", flush=True)
    started = time.perf_counter()
    measured = {
        name: mean([run_variant(name, variant, seed, data, outputs, args.quick) for seed in variant.seeds])
        for name, variant in VARIANTS.items() if args.only is None or name in args.only
    }
    if args.only is not None:
        for name, stages in measured.items():
            print(name, {s: {k: round(v, 4) for k, v in x.items()} for s, x in stages.items()})
        return 0
    rows = targets(measured)
    parts = [
        f"Compression on MNIST ({TRAIN} train / {TEST} test), {time.perf_counter() - started:.0f} s in all; "
        "p50 latency at batch 1: LiteRT on one thread for TFLite, a traced Keras call on TensorFlow's own threads for Keras.",
        compression_table(measured), tutorial_comparison(measured),
    ]
    return publish(parts, rows, outputs / "compression.md", lambda: plot(measured, outputs / "compression.png"))


def publish(parts: list[str], checks: list[tuple[str, str, str, bool]], path: Path, draw: Any) -> int:
    """Print the report (its parts, then the targets table) and write it to `path`, and the plot
    `draw()` makes; exit status 0 when every target passed."""
    rows = [(target, measured, threshold, "PASS" if ok else "FAIL") for target, measured, threshold, ok in checks]
    report = "\n\n".join([*parts, "Targets:", markdown(("target", "measured", "threshold", "result"), rows)])
    print("\n" + report)
    path.write_text(report + "\n")
    print(f"\nwrote {path} and {draw()}")
    return 0 if all(ok for *_, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
