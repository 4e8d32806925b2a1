"""Peak memory and time to the first training step of `data=image_folder` as the folder grows.

    python benchmarks/streaming.py --mnist DIR --images 2000,10000 [--epochs 1] [--steps 100] [--input-rate]
    python benchmarks/streaming.py --images 10000 --size 32 --seeds 1,2,3,4 data.in_memory_mb=0

DIR holds MNIST's t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz. The script writes a
folder of N RGB JPEGs under /tmp (never into the repository): the 10,000 digits cycled, upscaled
to 96x96, shifted, scaled and tinted at random so no two files are the same. It then runs
`python -m pipeline recipe=mobile_int8 data=image_folder` on the folder as a user would, polling
the resident memory of the run's whole process tree, and reads from the run's log the time to
its first training step, the input pipeline's images per second alone (when the run streams)
and the training steps per second. One row per folder size and seed (`--seeds`: the run's `seed`,
which sets the split, the initial weights and the shuffling), then the test accuracy's mean and
standard deviation over the seeds. `--size` resizes the same 96x96 files to a smaller model input.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

SIDE = 96
PAGE = os.sysconf("SC_PAGE_SIZE")


def digits(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """MNIST's 10,000 test digits (uint8, 28x28) and labels, read with the pipeline's IDX reader."""
    from pipeline.data.idx import read_idx

    return read_idx(folder / "t10k-images-idx3-ubyte.gz"), read_idx(folder / "t10k-labels-idx1-ubyte.gz")


def augmented(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Digits as 96x96 RGB uint8: scaled 2.5x to 3.5x, shifted, drawn in a random colour on a random background."""
    import tensorflow as tf

    out = np.empty((len(images), SIDE, SIDE, 3), np.uint8)
    for i, image in enumerate(images):
        side = int(rng.integers(70, 98))
        big = tf.image.resize(image[..., None].astype(np.float32), (side, side)).numpy()[..., 0] / 255.0
        canvas = np.zeros((SIDE, SIDE), np.float32)
        top, left = rng.integers(0, SIDE - side + 1, size=2) if side < SIDE else (0, 0)
        canvas[top : top + side, left : left + side] = big[: SIDE - top, : SIDE - left]
        ink, paper = rng.uniform(150, 255, 3), rng.uniform(0, 90, 3)
        out[i] = np.clip(paper + canvas[..., None] * (ink - paper), 0, 255).astype(np.uint8)
    return out


def write_folder(mnist: Path, count: int, root: Path) -> Path:
    """A folder of `count` JPEGs in one subfolder per digit (written once, reused by later runs)."""
    import tensorflow as tf

    folder = root / f"digits{count}"
    done = folder / ".complete"
    if done.exists():
        return folder
    x, y = digits(mnist)
    rng = np.random.default_rng(count)
    for label in range(10):
        (folder / str(label)).mkdir(parents=True, exist_ok=True)
    for start in range(0, count, 1000):
        indices = np.arange(start, min(start + 1000, count)) % len(x)
        for index, image in zip(range(start, start + len(indices)), augmented(x[indices], rng)):
            jpeg = tf.io.encode_jpeg(image, quality=90).numpy()
            (folder / str(int(y[index % len(x)])) / f"{index:06d}.jpg").write_bytes(jpeg)
    done.touch()
    return folder


def tree_rss(root: int) -> int:
    """Resident bytes of process `root` and all its descendants, from /proc."""
    parents: dict[int, int] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended while we looked
            continue
        parents[int(entry)] = int(fields[1])
        rss[int(entry)] = int(fields[21]) * PAGE
    total, frontier = 0, [root]
    while frontier:
        pid = frontier.pop()
        total += rss.get(pid, 0)
        frontier.extend(child for child, parent in parents.items() if parent == pid)
    return total


def run(folder: Path, extra: list[str], code: Path | None, side: int = SIDE) -> tuple[dict[str, float], str]:
    """Run mobile_int8 on `folder` at input size `side` in a fresh working folder (with the pipeline
    at `code` if given); the peak tree RSS, wall seconds, time to the first training step, and the log."""
    arguments = [
        "recipe=mobile_int8", "data=image_folder", f"data.path={folder}", f"data.image_size=[{side},{side}]",
        "budget.safety_net=null", "measure.latency_runs=5", "measure.warmup_runs=1", *extra,
    ]
    with tempfile.TemporaryDirectory() as work:
        started = time.perf_counter()
        process = subprocess.Popen(
            [sys.executable, "-m", "pipeline", *arguments], cwd=work, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            env={**os.environ, **({"PYTHONPATH": str(code)} if code else {})},
        )
        peak = [0]

        def poll() -> None:
            while process.poll() is None:
                peak[0] = max(peak[0], tree_rss(process.pid))
                time.sleep(0.2)

        watcher = threading.Thread(target=poll, daemon=True)
        watcher.start()
        lines, first_step = [], float("nan")
        assert process.stdout is not None
        for line in process.stdout:  # timestamped as it comes: the run logs its first step when done
            if "train: first training step done" in line and first_step != first_step:
                first_step = time.perf_counter() - started
                print(f"{folder.name}: first training step after {first_step:.1f} s, peak so far {peak[0] / 1e9:.2f} GB",
                      file=sys.stderr, flush=True)
            lines.append(line)
        process.wait()
        watcher.join()
        seconds, output = time.perf_counter() - started, "".join(lines)
    if process.returncode != 0:
        sys.exit(f"run on {folder} failed:\n{output[-3000:]}")
    return {"peak_gb": peak[0] / 1e9, "seconds": seconds, "first_step_s": first_step}, output


def from_log(output: str) -> dict[str, float]:
    """Numbers the run logs: training steps/s and the exported model's test accuracy."""
    match = re.search(r"train: ([\d.]+) training steps/s", output)
    found = {"train_steps_s": float(match.group(1)) if match else float("nan"), "input_images_s": float("nan")}
    cells = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in output.splitlines() if line.startswith("| ")]
    header = next((row for row in cells if row[0] == "stage"), None)
    export = [row for row in cells if row[0] == "export"]
    found["accuracy"] = float(export[-1][header.index("accuracy")]) if header and export else float("nan")
    return found


def input_rate(folder: Path, side: int = SIDE, batch_size: int = 32, limit: int = 20_000) -> float:
    """Images per second of the streamed training input alone (shuffling, decoding, resizing,
    batching; no model), over the first `limit` images of an epoch of the training split."""
    from pipeline.data.images import ImageFolderParams, ImageFolderSource
    from pipeline.device.params import DeviceParams
    from pipeline.device.setup import DeviceSetup

    params = ImageFolderParams(name="image_folder", path=str(folder), image_size=[side, side], in_memory_mb=0)
    data = ImageFolderSource(params).load(seed=42)
    batches = DeviceSetup(DeviceParams(name="cpu")).dataset(data.x_train, data.y_train, batch_size, seed=42)
    started, count = time.perf_counter(), 0
    for x, _ in batches.take(limit // batch_size):
        count += int(x.shape[0])
    return count / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mnist", type=Path, default=Path("/work/shared/data/mnist10k"))
    parser.add_argument("--images", default="2000", help="comma-separated folder sizes")
    parser.add_argument("--epochs", type=int, default=1, help="training epochs (prune fine-tunes one)")
    parser.add_argument("--steps", type=int, help="training steps per epoch at most (train and prune)")
    parser.add_argument("--root", type=Path, default=Path(tempfile.gettempdir()) / "streaming-benchmark")
    parser.add_argument("--code", type=Path, help="run the pipeline from this source tree (e.g. an export of main)")
    parser.add_argument("--input-rate", action="store_true", help="also time the streamed input pipeline alone")
    parser.add_argument("--seeds", help="comma-separated run seeds, one run per seed (default: the config's seed)")
    parser.add_argument("--size", type=int, default=SIDE, help="model input side the 96x96 files are resized to")
    parser.add_argument("--log", type=Path, help="write each run's log to LOG-N[-sSEED].txt")
    parser.add_argument("extra", nargs="*", help="more pipeline overrides, e.g. data.in_memory_mb=0")
    args = parser.parse_args()
    print("| images | seed | pixels MB | peak RSS GB | first step s | input images/s | train steps/s | test accuracy | wall s |")
    print("|--------|------|-----------|-------------|--------------|----------------|---------------|---------------|--------|")
    seeds = [int(seed) for seed in args.seeds.split(",")] if args.seeds else [None]
    for count in (int(n) for n in args.images.split(",")):
        folder = write_folder(args.mnist, count, args.root)
        overrides = [f"stages.train.epochs={args.epochs}", "stages.prune.epochs=1", *args.extra]
        if args.steps:
            overrides += [f"stages.train.steps_per_epoch={args.steps}", f"stages.prune.steps_per_epoch={args.steps}"]
        accuracies = [run_row(folder, count, seed, overrides, args) for seed in seeds]
        if len(accuracies) > 1:
            print(f"test accuracy over seeds {args.seeds}: mean {np.mean(accuracies):.4f}, "
                  f"std {np.std(accuracies, ddof=1):.4f}", flush=True)


def run_row(folder: Path, count: int, seed: int | None, overrides: list[str], args: argparse.Namespace) -> float:
    """One run on `folder` (with `seed=` when given) printed as a table row; its test accuracy."""
    measured, output = run(folder, overrides + ([f"seed={seed}"] if seed is not None else []), args.code, args.size)
    if args.log:
        Path(f"{args.log}-{count}{'' if seed is None else f'-s{seed}'}.txt").write_text(output)
    logged = from_log(output)
    if args.input_rate:
        logged["input_images_s"] = input_rate(folder, args.size)
    print(
        f"| {count:,} | {'-' if seed is None else seed} | {count * args.size * args.size * 3 / 1e6:.0f} "
        f"| {measured['peak_gb']:.2f} | {measured['first_step_s']:.1f} | {logged['input_images_s']:.0f} "
        f"| {logged['train_steps_s']:.1f} | {logged['accuracy']:.4f} | {measured['seconds']:.0f} |",
        flush=True,
    )
    return logged["accuracy"]


if __name__ == "__main__":
    main()
