"""Channel pruning benchmark: does removing channels make models faster? Side by side in one run.

    python benchmarks/channel_pruning.py [--mnist DIR] [--runs 200] [--rounds 5] [--seeds 3] [--quick] [--only mnist|mobilenet]

MNIST (the first 8,000 of the 10k test images train, the last 2,000 evaluate, as in
benchmarks/compression.py): the small CNN trained once (the stage cache shares it), then
- dense: full-integer int8;
- channel-pruned at shares 0.5 and 0.75, each one-shot (remove, then fine-tune) and gradual
  (three removal steps with fine-tuning between them, the same epochs in all), then int8.
Which of one-shot and gradual recovers better is read on the validation split (mean over three
seeds, each with its own trained model); the test split is reported once per row. Writes the tables to channel_pruning.md and the MNIST
accuracy against
latency, with its Pareto front, to channel_pruning.png in the outputs folder.

MobileNetV2 alpha 1.0 at 224x224 (10 classes, weights=None, one epoch on synthetic images:
latency does not depend on what the weights learned): dense and with half the channels removed,
each as float32 and int8 TFLite.

Every TFLite file is timed with the LiteRT interpreter at batch 1; the files of one comparison
take turns for `--rounds` rounds of `--runs` invocations (after 10 warm-up), and the p50 (and
p10) is the median over rounds, so a busy moment of the shared machine hits every file alike. On
a machine shared with other work, runs that lose the CPU to another process inflate the p50; the
p10 is close to what an invocation costs on an idle core, so the tables show both. Targets: the
half-channel int8 small CNN at least 1.6x faster than dense int8 and within 1 point of the dense
float model's accuracy; the half-channel MobileNetV2 at least 1.5x faster than dense, float and
int8, on 1 and 2 threads.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.compression import FINE_TUNE, INT8, TRAIN_STAGE, markdown, split_folder  # noqa: E402
from benchmarks.latency import synthetic_npz  # noqa: E402

CHANNEL = {**FINE_TUNE, "epochs": 6}
SHARES = (0.5, 0.75)
SCHEDULES = {"one-shot": 1, "gradual": 3}
SEEDS = (42, 1, 2)
MNIST_VARIANTS = {
    "dense": {"train": TRAIN_STAGE, "quantize": INT8},
    **{
        f"{schedule} {share:.0%}": {
            "train": TRAIN_STAGE, "channel_prune": {**CHANNEL, "share": share, "steps": steps}, "quantize": INT8,
        }
        for share in SHARES for schedule, steps in SCHEDULES.items()
    },
}
MOBILENET_TRAIN = {"epochs": 1, "batch_size": 16}
MOBILENET_VARIANTS = {
    f"{name} {mode}": {"train": MOBILENET_TRAIN, **pruning, "quantize": {"mode": mode, "calibration_samples": 64}}
    for name, pruning in (("dense", {}), ("pruned 50%", {"channel_prune": {"share": 0.5, "epochs": 1, "batch_size": 16}}))
    for mode in ("none", "int8")
}


def run_stages(name: str, stages: dict, overrides: list[str], outputs: Path, seed: int = 42):
    """One pipeline run of `stages` -> (per-stage metrics, the final artifact)."""
    from hydra import compose, initialize_config_module

    from pipeline.run.runner import RunInfo, run

    with initialize_config_module(config_module="recipes", version_base="1.3"):
        cfg = compose("config", overrides=[
            f"outputs={outputs}", f"seed={seed}", "measure.latency_runs=5", "measure.warmup_runs=1", *overrides,
        ])
    cfg.stages = stages
    started = time.perf_counter()
    folder = f"{name.replace(' ', '_').replace('%', '')}_{seed}"
    result = run(cfg, RunInfo(run_dir=outputs / "runs" / folder, recipe="channel_benchmark"))
    print(f"  {name} (seed {seed}): {time.perf_counter() - started:.0f} s", flush=True)
    return {row.stage: row.metrics for row in result.rows}, result.artifact


def interleaved(files: dict[str, Path], sample: np.ndarray, threads: int, runs: int, rounds: int) -> dict[str, tuple[float, float]]:
    """Per file, the medians over rounds of its (p50, p10) ms at batch 1, the files taking turns in every round."""
    from pipeline.measure import litert

    found: dict[str, list[np.ndarray]] = {name: [] for name in files}
    for _ in range(rounds):
        for name, path in files.items():
            found[name].append(np.percentile(litert.latency_ms(path, sample, runs, 10, threads), [50, 10]))
    return {name: tuple(float(v) for v in np.median(values, axis=0)) for name, values in found.items()}


def val_accuracy(artifact) -> float | None:
    """The validation accuracy the channel_prune stage reported, if the run had one."""
    return next((a.metrics["val_accuracy"] for a in artifact.lineage() if a.stage == "channel_prune"), None)


def averaged(runs: list[tuple[dict, object]]) -> dict[str, float]:
    """Mean over seeds of the numbers a row shows: the Keras model's (channel_prune, else train) and int8's."""
    keras = [m.get("channel_prune", m["train"]) for m, _ in runs]
    vals = [val_accuracy(artifact) for _, artifact in runs]
    return {
        "params": keras[0]["params"], "macs": keras[0]["macs"], "keras": float(np.mean([k["accuracy"] for k in keras])),
        "int8": float(np.mean([m["quantize"]["accuracy"] for m, _ in runs])),
        "val": float(np.mean(vals)) if None not in vals else float("nan"),
    }


def timing(times: tuple[float, float], base: tuple[float, float], scale: float = 1.0) -> list[str]:
    """Cells: p50, p10, and the speed-up over `base` at each."""
    return [f"{times[0] * scale:.3g}", f"{times[1] * scale:.3g}", f"{base[0] / times[0]:.2f}x", f"{base[1] / times[1]:.2f}x"]


def mnist(args: argparse.Namespace, outputs: Path) -> tuple[str, list[tuple[str, str, str, bool]]]:
    """The small-CNN table and its targets."""
    data = split_folder(args.mnist, outputs / "data")
    overrides = ["data=idx", f"data.path={data}", "data.val_fraction=0.1"]
    variants = {
        name: {stage: {**params, **({"epochs": 1} if args.quick and "epochs" in params else {})} for stage, params in stages.items()}
        for name, stages in MNIST_VARIANTS.items()
    }
    seeds = SEEDS[: args.seeds]
    runs = {name: [run_stages(name, stages, overrides, outputs, seed) for seed in seeds] for name, stages in variants.items()}
    rows = {name: averaged(found) for name, found in runs.items()}
    files = {name: found[0][1].path for name, found in runs.items()}  # the first seed's files are timed
    sample = np.random.default_rng(0).random((28, 28, 1), np.float32)  # dense kernels take as long on any pixels
    load = os.getloadavg()[0]
    times = interleaved(files, sample, 1, args.runs, args.rounds)
    dense_float = float(np.mean([m["train"]["accuracy"] for m, _ in runs["dense"]]))
    table = [
        (name, f"{r['params']:,.0f}", f"{r['macs'] / 1e6:.2f}", "-" if np.isnan(r["val"]) else f"{r['val']:.4f}",
         f"{r['keras']:.4f}", f"{r['int8']:.4f}", f"{100 * (r['int8'] - dense_float):+.2f}", *timing(times[name], times["dense"], 1000))
        for name, r in rows.items()
    ]
    header = ("model", "params", "MMACs", "val acc", "Keras acc", "int8 acc", "int8 vs dense float pt",
              "p50 us", "p10 us", "speed-up p50", "speed-up p10")
    half = max((n for n in rows if n.endswith("50%")), key=lambda n: rows[n]["val"])  # chosen on validation
    speedup, drop = times["dense"][0] / times[half][0], 100 * (dense_float - rows[half]["int8"])
    targets = [
        (f"MNIST small CNN, half the channels ({half}, better on validation): int8 p50 speed-up vs dense int8",
         f"{speedup:.2f}x ({times['dense'][0] * 1000:.1f} / {times[half][0] * 1000:.1f} us; "
         f"p10: {times['dense'][1] / times[half][1]:.2f}x)", ">= 1.6x", speedup >= 1.6),
        ("  its int8 accuracy drop vs dense float Keras", f"{drop:+.2f} pt ({rows[half]['int8']:.4f} vs {dense_float:.4f})",
         "<= 1 pt", drop <= 1),
    ]
    plot(rows, times, outputs / "channel_pruning.png")
    title = (f"MNIST small CNN, accuracies are means over seeds {', '.join(map(str, seeds))} (dense float Keras: "
             f"{dense_float:.4f}); LiteRT int8 at batch 1, 1 thread, load average {load:.1f} when timing")
    return title + "\n\n" + markdown(header, table), targets


def plot(rows: dict[str, dict[str, float]], times: dict[str, tuple[float, float]], path: Path) -> Path:
    """int8 test accuracy against int8 p50 of every MNIST row, with the Pareto front."""
    from pipeline.commands.report import RunPoint
    from pipeline.commands.report import plot as pareto_plot

    points = [RunPoint(name, name, {}, {"accuracy": r["int8"], "p50_us": times[name][0] * 1000}) for name, r in rows.items()]
    return pareto_plot(points, "p50_us", "int8 p50 at batch 1 (us, LiteRT, 1 thread)", path)


def mobilenet(args: argparse.Namespace, outputs: Path) -> tuple[str, list[tuple[str, str, str, bool]]]:
    """The MobileNetV2 1.0/224 table and its targets."""
    data = synthetic_npz(outputs, 224)
    overrides = ["data=npz", f"data.path={data}", "data.val_fraction=0", "model=mobilenet_v2", "model.width=1.0"]
    measured = {name: run_stages(name, stages, overrides, outputs) for name, stages in MOBILENET_VARIANTS.items()}
    files = {name: artifact.path for name, (_, artifact) in measured.items()}
    sample = np.random.default_rng(1).random((224, 224, 3), dtype=np.float32)
    load = os.getloadavg()[0]
    times = {threads: interleaved(files, sample, threads, args.runs, args.rounds) for threads in (1, 2)}
    table, targets = [], []
    for name, (m, _) in measured.items():
        keras, base = m.get("channel_prune", m["train"]), name.replace("pruned 50%", "dense")
        table.append((name, f"{keras['params']:,.0f}", f"{m['quantize']['macs'] / 1e6:.0f}",
                      f"{m['quantize']['size_bytes'] / 2**20:.2f}",
                      *(cell for threads in (1, 2) for cell in timing(times[threads][name], times[threads][base]))))
    for mode, label in (("none", "float32"), ("int8", "int8")):
        for threads in (1, 2):
            dense, pruned = times[threads][f"dense {mode}"], times[threads][f"pruned 50% {mode}"]
            targets.append((f"MobileNetV2 1.0/224, half the channels, {label}, {threads} thread(s): p50 speed-up",
                            f"{dense[0] / pruned[0]:.2f}x ({dense[0]:.2f} / {pruned[0]:.2f} ms; p10: {dense[1] / pruned[1]:.2f}x)",
                            ">= 1.5x", dense[0] / pruned[0] >= 1.5))
    header = ("model (quantize mode)", "params", "MMACs", "size MiB", *(
        f"{threads}t {what}" for threads in (1, 2) for what in ("p50 ms", "p10 ms", "speed-up p50", "speed-up p10")))
    title = f"MobileNetV2 alpha 1.0, 224x224, 10 classes; LiteRT at batch 1, load average {load:.1f} when timing"
    return title + "\n\n" + markdown(header, table), targets


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mnist", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/mnist10k")
    parser.add_argument("--outputs", type=Path, default=None, help="run folder (default: a temporary one)")
    parser.add_argument("--runs", type=int, default=200, help="timed invocations per file and round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds in which the compared files take turns")
    parser.add_argument("--seeds", type=int, default=len(SEEDS), choices=range(1, len(SEEDS) + 1), help="MNIST seeds")
    parser.add_argument("--quick", action="store_true", help="one epoch per stage: checks the script, not the targets")
    parser.add_argument("--only", choices=("mnist", "mobilenet"), default=None)
    args = parser.parse_args()
    outputs = (args.outputs or Path(tempfile.mkdtemp(prefix="channel-pruning-"))).resolve()
    started = time.perf_counter()
    parts = [part(args, outputs) for key, part in (("mnist", mnist), ("mobilenet", mobilenet)) if args.only in (None, key)]
    targets = [target for _, found in parts for target in found]
    report = "\n\n".join([
        *(table for table, _ in parts), f"Targets ({time.perf_counter() - started:.0f} s in all):",
        markdown(("target", "measured", "threshold", "result"), [(t, x, th, "PASS" if ok else "FAIL") for t, x, th, ok in targets]),
    ])
    print("\n" + report)
    (outputs / "channel_pruning.md").write_text(report + "\n")
    print(f"\nwrote {outputs / 'channel_pruning.md'}" + (f" and {outputs / 'channel_pruning.png'}" if args.only != "mobilenet" else ""))
    return 0 if all(ok for *_, ok in targets) else 1


if __name__ == "__main__":
    sys.exit(main())
