"""Batch-1 latency of MobileNetV2 exports: float32, int8, and pruned float32 kept sparse.

    python benchmarks/latency.py [--runs 100]

For MobileNetV2 at alpha 0.35 / 96x96 and alpha 1.0 / 224x224 (10 classes, weights=None), the
pipeline trains one epoch on synthetic images (latency does not depend on what the weights
learned), then exports float32 TFLite, int8 TFLite, and 50%- and 80%-pruned float32 TFLite with
`keep_sparsity=true` (Optimize.EXPERIMENTAL_SPARSITY, which XNNPACK's sparse kernels can use when
at least 2/3 of the 1x1 convolution weights are zero).
The same trained Keras model is also converted by hand as the TFLite guide does it, and every
file is timed with the LiteRT interpreter at batch 1 on 1 and 2 threads, side by side.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from hydra import compose, initialize_config_module

from pipeline.measure import litert
from pipeline.measure.metrics import sparsity_of
from pipeline.run.runner import RunInfo, run

MODELS = [(0.35, 96), (1.0, 224)]
SPARSITIES = (0.5, 0.8)


def synthetic_npz(folder: Path, size: int) -> Path:
    """64 training and 16 test images of random pixels in 10 classes."""
    rng = np.random.default_rng(0)
    path = folder / f"images{size}.npz"
    np.savez(
        path,
        x_train=rng.integers(0, 256, (64, size, size, 3), dtype=np.uint8), y_train=np.arange(64) % 10,
        x_test=rng.integers(0, 256, (16, size, size, 3), dtype=np.uint8), y_test=np.arange(16) % 10,
    )
    return path


def pruned(sparsity: float) -> str:
    """The name of a pruned variant."""
    return f"pruned {sparsity:.0%} float32, sparse"


def pipeline_exports(folder: Path, alpha: float, size: int) -> dict[str, Path]:
    """Run the three variants through the pipeline (the cache shares the training) -> TFLite files."""
    data = synthetic_npz(folder, size)
    variants = {
        "float32": {"train": {"epochs": 1}, "quantize": {"mode": "none"}},
        "int8": {"train": {"epochs": 1}, "quantize": {"mode": "int8", "calibration_samples": 64}},
        **{
            pruned(sparsity): {
                "train": {"epochs": 1},
                "prune": {"final_sparsity": sparsity, "epochs": 2, "batch_size": 16},
                "quantize": {"mode": "none", "keep_sparsity": "true"},
            }
            for sparsity in SPARSITIES
        },
    }
    files = {}
    with initialize_config_module(config_module="recipes", version_base="1.3"):
        for name, stages in variants.items():
            cfg = compose("config", overrides=[
                f"outputs={folder / 'outputs'}", "data=npz", f"data.path={data}",
                "data.val_fraction=0", "model=mobilenet_v2", f"model.width={alpha}",
                "measure.latency_runs=3", "measure.warmup_runs=1",
            ])
            cfg.stages = stages
            result = run(cfg, RunInfo(run_dir=folder / "runs" / f"{alpha}-{size}-{len(files)}", recipe="latency"))
            files[name] = result.artifact.path
            trained = result.run_dir / "stages" / "0_train" / "model.keras"
    files.update(hand_converted(trained, np.load(data)["x_train"][:64].astype(np.float32) / 255.0, folder / f"hand{size}"))
    return files


def hand_converted(keras_file: Path, calibration: np.ndarray, folder: Path) -> dict[str, Path]:
    """The TFLite guide's conversions of the same trained model: float32, and full integer int8."""
    import tensorflow as tf
    import tf_keras as keras

    folder.mkdir(parents=True, exist_ok=True)
    model = keras.models.load_model(keras_file, compile=False)
    float_file, int8_file = folder / "float32.tflite", folder / "int8.tflite"
    float_file.write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([sample[np.newaxis]] for sample in calibration)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    int8_file.write_bytes(converter.convert())
    return {"by hand: float32": float_file, "by hand: int8": int8_file}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for alpha, size in MODELS:
            files = pipeline_exports(Path(tmp), alpha, size)
            sample = np.random.default_rng(1).random((size, size, 3), dtype=np.float32)
            float_size = files["float32"].stat().st_size
            for name, path in files.items():
                p50 = [float(np.median(litert.latency_ms(path, sample, args.runs, 10, threads))) for threads in (1, 2)]
                sparsity = sparsity_of(litert.constant_tensors(path))
                rows.append((f"{alpha}/{size}", name, path.stat().st_size / float_size, sparsity, *p50))
    print(f"MobileNetV2, 10 classes, LiteRT p50 at batch 1 over {args.runs} runs after 10 warm-up")
    print("| alpha/input | export                     | size vs float32 | sparsity | 1 thread ms | 2 threads ms |")
    print("|-------------|----------------------------|-----------------|----------|-------------|--------------|")
    for model, name, ratio, sparsity, one, two in rows:
        print(f"| {model:<11} | {name:<26} | {ratio:15.2f} | {sparsity:8.0%} | {one:11.2f} | {two:12.2f} |")
    by_model: dict[str, dict[str, float]] = {}
    for model, name, _, _, one, _ in rows:
        by_model.setdefault(model, {})[name] = one
    for model, times in by_model.items():
        ours, hand = times["int8"], times["by hand: int8"]
        verdict = "PASS" if ours <= hand * 1.05 else "FAIL"
        print(f"{model}: pipeline int8 / hand-converted int8 p50 (1 thread) = {ours / hand:.2f} (target <= 1, 5% noise): {verdict};"
              f" int8 / float32 = {ours / times['float32']:.2f}; "
              + "; ".join(f"{pruned(s)} / float32 = {times[pruned(s)] / times['float32']:.2f}" for s in SPARSITIES))


if __name__ == "__main__":
    main()
