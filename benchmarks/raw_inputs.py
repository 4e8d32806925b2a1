"""Raw inputs in, class names out: does `pipeline.predict` reproduce the run's accuracy, and what
does folding the preprocessing into the int8 model cost at batch 1?

    python benchmarks/raw_inputs.py [--mnist DIR] [--rounds 20]

For digits, idx (MNIST-10k: the 10,000 t10k images, split 70/10/20), csv (scikit-learn's breast
cancer table written as a CSV file) and image_folder (PNG photos of three colour classes, of
several sizes, resized to 24x24), the mobile_int8 recipe (train, 50% pruning, int8) runs twice:
with the steps folded into the model (`stages.quantize.inputs=raw`) and kept outside
(`inputs=preprocessed`); the stage cache trains once. `pipeline.predict` then runs each exported
.tflite on the raw test inputs (saved as .npz) and its accuracy is compared with the accuracy the
run reported. Both files are timed with the LiteRT interpreter at batch 1 (1 thread), in
alternating rounds so that machine noise falls on both alike.
"""

from __future__ import annotations

import argparse
import re
import tempfile
from pathlib import Path

import numpy as np
from hydra import compose, initialize_config_module

from pipeline.commands.predict import predict
from pipeline.config.recipe import check_recipe
from pipeline.measure import litert
from pipeline.run.runner import RunInfo, run

MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist10k"
CONTRACTS = ("raw", "preprocessed")


def breast_cancer_csv(folder: Path) -> Path:
    """scikit-learn's breast cancer table (569 rows, 30 features) as a CSV file with a text label."""
    from sklearn.datasets import load_breast_cancer

    table = load_breast_cancer()
    lines = [",".join([*table.feature_names, "diagnosis"])]
    lines += [",".join([*map(repr, map(float, x)), table.target_names[y]]) for x, y in zip(table.data, table.target)]
    path = folder / "breast_cancer.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def colour_photos(folder: Path) -> Path:
    """60 PNG photos per class (blue, green, red) of noisy pixels, 20 to 31 pixels on a side."""
    import tensorflow as tf

    rng = np.random.default_rng(1)
    for k, name in enumerate(["blue", "green", "red"]):
        (folder / "photos" / name).mkdir(parents=True)
        for i in range(60):
            pixels = rng.integers(0, 200, (20 + i % 12, 22 + i % 7, 3)).astype(np.uint8)
            pixels[..., 2 - k] += 12  # a faint tint under strong noise: not every photo is easy
            (folder / "photos" / name / f"{i}.png").write_bytes(tf.io.encode_png(pixels).numpy())
    return folder / "photos"


def cases(folder: Path, mnist: Path) -> dict[str, list[str]]:
    """Overrides of each data source's runs."""
    return {
        "digits": ["data=digits"],
        "idx (MNIST-10k)": ["data=idx", f"data.path={mnist}", "stages.train.epochs=5", "stages.prune.epochs=2"],
        "csv (breast cancer)": ["data=csv", f"data.path={breast_cancer_csv(folder)}", "data.label=diagnosis", "model=mlp"],
        "image_folder (photos)": ["data=image_folder", f"data.path={colour_photos(folder)}", "data.image_size=[24,24]"],
    }


def run_case(folder: Path, overrides: list[str], contract: str) -> tuple[float, Path, object]:
    """One run of mobile_int8: its reported test accuracy, its export folder and its data."""
    with initialize_config_module(config_module="recipes", version_base="1.3"):
        cfg = compose("config", overrides=[
            f"outputs={folder / 'outputs'}", "recipe=mobile_int8", *overrides,
            f"++stages.quantize.inputs={contract}", "measure.latency_runs=20",
        ])
    data = check_recipe(cfg).data_source.load(cfg.seed)
    result = run(cfg, RunInfo(run_dir=folder / f"run-{contract}", recipe="mobile_int8"))
    return result.rows[-1].metrics["accuracy"], result.run_dir / "export", data


def predicted(export: Path, data, folder: Path) -> float:
    """The accuracy `pipeline.predict` prints for the raw test inputs."""
    inputs = folder / "test.npz"
    np.savez(inputs, x=data.test_inputs(raw=True), y=data.y_test)
    report = predict(export, [inputs])
    return float(re.search(r"^accuracy: ([\d.]+) \((\d+) of (\d+)\)$", report, re.M).group(2)) / len(data.y_test)


def p50_us(files: dict[str, Path], sample: np.ndarray, rounds: int) -> dict[str, float]:
    """Median batch-1 latency of each file (microseconds), timed in alternating rounds."""
    timings: dict[str, list[np.ndarray]] = {name: [] for name in files}
    for _ in range(rounds):
        for name, path in files.items():
            timings[name].append(litert.latency_ms(path, sample, runs=200, warmup=20, threads=1))
    return {name: float(np.median(np.concatenate(t))) * 1000 for name, t in timings.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mnist", type=Path, default=MNIST, help="folder with t10k-images-idx3-ubyte.gz and labels")
    parser.add_argument("--rounds", type=int, default=20, help="alternating timing rounds of 200 invocations each")
    args = parser.parse_args()
    accuracy_rows, latency_rows = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name, overrides in cases(Path(tmp), args.mnist).items():
            files = {}
            for contract in CONTRACTS:
                folder = Path(tmp) / re.sub(r"\W+", "_", name) / contract
                folder.mkdir(parents=True)
                reported, export, data = run_case(folder.parent, overrides, contract)
                reproduced = predicted(export, data, folder)
                files[contract] = export / "model.tflite"
                accuracy_rows.append(
                    f"| {name} | {contract} | {reported:.4f} | {reproduced:.4f} | {'yes' if reproduced == reported else 'NO'} |"
                )
            timing = p50_us(files, data.test_inputs(raw=True)[0], args.rounds)
            raw, pre = timing["raw"], timing["preprocessed"]
            latency_rows.append(f"| {name} | {raw:.2f} | {pre:.2f} | {raw - pre:+.2f} ({raw / pre - 1:+.1%}) |")
    print("| data | int8 model takes | run's test accuracy | predict on raw test inputs | equal |")
    print("|---|---|---|---|---|")
    print("\n".join(accuracy_rows))
    print()
    print("| data | p50 us, steps folded (raw inputs) | p50 us, steps outside | folding costs |")
    print("|---|---|---|---|")
    print("\n".join(latency_rows))


if __name__ == "__main__":
    main()
