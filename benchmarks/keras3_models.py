"""A model trained with Keras 3 goes through the pipeline: as a .keras file and as an inference-only SavedModel.

A short Keras 3 script (`import keras`, as TensorFlow 2.16+ gives it) trains a small functional CNN
(with batch normalization and dropout) on MNIST-10k, then saves it with `model.save("m.keras")` and
`model.export("m_savedmodel")`. The pipeline then runs, in this one process:

- mobile_int8 and qat_int8 from the .keras file (rebuilt in tf-keras and checked on the data);
- ptq_int8 (quantize int8 -> export) from the .keras file and from the SavedModel.

It prints the largest difference between the Keras 3 model's and the rebuilt tf-keras model's
predictions on the whole test split, and each run's int8 test accuracy next to the Keras 3 float
model's (all on the same split: the runner's idx source with the same seed).

    python benchmarks/keras3_models.py --mnist /work/shared/data/mnist10k
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

os.environ["TF_USE_LEGACY_KERAS"] = "1"

import numpy as np  # noqa: E402

SEED = 42


def keras3_script(data, folder: Path, epochs: int) -> tuple[Path, Path, np.ndarray]:
    """What a Keras 3 user writes: build, fit, save both ways. Returns the files and the test logits."""
    import keras

    keras.utils.set_random_seed(SEED)
    layers = keras.layers
    inputs = keras.Input(data.input_shape)
    x = layers.Conv2D(32, 3, padding="same")(inputs)
    x = layers.ReLU()(layers.BatchNormalization()(x))
    x = layers.MaxPooling2D()(x)
    x = layers.Conv2D(64, 3, padding="same", activation="relu")(x)
    x = layers.MaxPooling2D()(x)
    x = layers.Flatten()(x)
    x = layers.Dropout(0.3)(x)
    model = keras.Model(inputs, layers.Dense(data.num_classes)(x), name="keras3_cnn")
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    model.fit(data.x_train, data.y_train, validation_data=(data.x_val, data.y_val), epochs=epochs, batch_size=64, verbose=2)
    model.save(folder / "m.keras")
    model.export(folder / "m_savedmodel", verbose=False)
    return folder / "m.keras", folder / "m_savedmodel", model.predict(data.x_test, verbose=0)


def run_recipe(recipe: str, path: Path, mnist: str, outputs: Path, *extra: str) -> dict:
    """One pipeline run on the file; the last quantizing stage's row and the run's seconds."""
    from hydra import compose, initialize_config_module

    from pipeline.config.arguments import with_stage_prefix
    from pipeline.run.runner import RunInfo, run

    overrides = [
        f"recipe={recipe}", "model=file", f"model.path={path}", "data=idx", f"data.path={mnist}", f"seed={SEED}",
        f"outputs={outputs}", "cache=false", "measure.latency_runs=20", *extra,
    ]
    with initialize_config_module(config_module="recipes", version_base="1.3"):
        cfg = compose("config", overrides=[with_stage_prefix(o) for o in overrides])
    started = time.perf_counter()
    result = run(cfg, RunInfo(run_dir=outputs / "runs" / f"{recipe}_{path.name}", recipe=recipe))
    row = next(r for r in reversed(result.rows) if r.format == "tflite")
    return {**row.metrics, "stage": row.stage, "seconds": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mnist", default="/work/shared/data/mnist10k", help="folder of MNIST idx files")
    parser.add_argument("--epochs", type=int, default=5, help="Keras 3 training epochs")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="[%(asctime)s] %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("pipeline").setLevel(logging.INFO)  # the runs' progress

    from pipeline.config.recipe import configure
    from pipeline.models.user import FileModel, FileModelParams
    from pipeline.plugin import registry

    data = configure(registry.DATA, {"name": "idx", "path": args.mnist}, "data").load(SEED)
    folder = Path(tempfile.mkdtemp(prefix="keras3-bench-"))
    keras_file, saved_model, keras3_logits = keras3_script(data, folder, args.epochs)
    float_accuracy = float(np.mean(keras3_logits.argmax(-1) == data.y_test))

    plugin = FileModel(FileModelParams(name="file", path=str(keras_file)))
    plugin.on_data_loaded(data)
    rebuilt_logits = plugin.build(data.input_shape, data.num_classes).predict(data.x_test, verbose=0)
    max_difference = float(np.max(np.abs(rebuilt_logits - keras3_logits)))
    same_class = float(np.mean(rebuilt_logits.argmax(-1) == keras3_logits.argmax(-1)))

    outputs = folder / "outputs"
    runs = {
        "mobile_int8 (.keras)": run_recipe(
            "mobile_int8", keras_file, args.mnist, outputs, "stages.train.epochs=1", "stages.prune.epochs=3"
        ),
        "qat_int8 (.keras)": run_recipe("qat_int8", keras_file, args.mnist, outputs, "stages.train.epochs=1", "stages.qat.epochs=2"),
        "ptq_int8 (.keras)": run_recipe("ptq_int8", keras_file, args.mnist, outputs),
        "ptq_int8 (model.export SavedModel)": run_recipe("ptq_int8", saved_model, args.mnist, outputs),
    }
    print(f"\nKeras 3 model: {len(data.x_train)} train / {len(data.x_test)} test MNIST images, {args.epochs} epochs, "
          f"float test accuracy {float_accuracy:.4f}")
    print(f"rebuilt in tf-keras: largest prediction difference on the {len(data.x_test)} test images {max_difference:.2g} "
          f"(same top class for {same_class:.2%})\n")
    print("| run | int8 accuracy | vs Keras 3 float | int8 size | sparsity | run time |")
    print("|---|---|---|---|---|---|")
    for name, row in runs.items():
        print(f"| {name} | {row['accuracy']:.4f} | {100 * (row['accuracy'] - float_accuracy):+.2f} pt | "
              f"{row['size_bytes'] / 1024:.1f} KiB | {row['sparsity']:.1%} | {row['seconds']:.0f} s |")


if __name__ == "__main__":
    main()
