"""mobile_int8 written by hand, as the TensorFlow and TFMOT guides write it.

The baseline for benchmarks/overhead.py: the same data, model, epochs and TensorFlow/TFMOT calls
as `python -m pipeline recipe=mobile_int8`, with the evaluations and size checks the pruning
and post-training quantization guides do after each step.

    python benchmarks/handwritten_mobile_int8.py --train-epochs 30 --prune-epochs 6 --sparsity 0.5
"""

import argparse
import gzip
import math
import os
import tempfile

os.environ["TF_USE_LEGACY_KERAS"] = "1"

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_model_optimization as tfmot  # noqa: E402
import tf_keras as keras  # noqa: E402
from ai_edge_litert.interpreter import Interpreter  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402


def gzipped_size(path):
    with open(path, "rb") as handle:
        return len(gzip.compress(handle.read()))


def tflite_accuracy(tflite_bytes, x, y):
    interpreter = Interpreter(model_content=tflite_bytes)
    source = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(source["index"], list(x.shape))
    interpreter.allocate_tensors()
    source, target = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    scale, zero_point = source["quantization"]
    interpreter.set_tensor(source["index"], np.clip(np.round(x / scale + zero_point), -128, 127).astype(np.int8))
    interpreter.invoke()
    return np.mean(np.argmax(interpreter.get_tensor(target["index"]), axis=-1) == y)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--train-epochs", type=int, default=30)
    parser.add_argument("--prune-epochs", type=int, default=6)
    parser.add_argument("--sparsity", type=float, default=0.5)
    args = parser.parse_args()
    keras.utils.set_random_seed(42)
    folder = tempfile.mkdtemp()

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[..., np.newaxis]
    y = digits.target
    x_rest, x_test, y_rest, y_test = train_test_split(x, y, test_size=0.2, random_state=42, stratify=y)
    x_train, x_val, y_train, y_val = train_test_split(x_rest, y_rest, test_size=0.125, random_state=42, stratify=y_rest)

    model = keras.Sequential([
        keras.layers.Input((8, 8, 1)),
        keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        keras.layers.Dense(64, activation="relu"),
        keras.layers.Dense(10),
    ])
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss, metrics=["accuracy"])
    model.fit(x_train, y_train, epochs=args.train_epochs, batch_size=32, validation_data=(x_val, y_val), verbose=0)
    _, baseline_accuracy = model.evaluate(x_test, y_test, verbose=0)
    baseline_file = os.path.join(folder, "baseline.keras")
    model.save(baseline_file)

    steps = args.prune_epochs * math.ceil(len(x_train) / 32)
    end_step = int(0.7 * (steps - 1))
    frequency = max(1, end_step // 10)
    schedule = tfmot.sparsity.keras.PolynomialDecay(0.0, args.sparsity, 0, (end_step // frequency) * frequency, frequency=frequency)
    pruned = tfmot.sparsity.keras.prune_low_magnitude(model, pruning_schedule=schedule)
    pruned.compile(optimizer=keras.optimizers.Adam(5e-4), loss=loss, metrics=["accuracy"])
    pruned.fit(x_train, y_train, epochs=args.prune_epochs, batch_size=32, validation_data=(x_val, y_val), verbose=0,
               callbacks=[tfmot.sparsity.keras.UpdatePruningStep()])
    stripped = tfmot.sparsity.keras.strip_pruning(pruned)
    stripped.compile(loss=loss, metrics=["accuracy"])
    _, pruned_accuracy = stripped.evaluate(x_test, y_test, verbose=0)
    pruned_file = os.path.join(folder, "pruned.keras")
    stripped.save(pruned_file)

    converter = tf.lite.TFLiteConverter.from_keras_model(stripped)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([x_train[i : i + 1]] for i in range(200))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    tflite_model = converter.convert()
    tflite_file = os.path.join(folder, "model.tflite")
    with open(tflite_file, "wb") as handle:
        handle.write(tflite_model)
    int8_accuracy = tflite_accuracy(tflite_model, x_test, y_test)

    print(f"baseline accuracy {baseline_accuracy:.4f}, gzip {gzipped_size(baseline_file)} bytes")
    print(f"pruned   accuracy {pruned_accuracy:.4f}, gzip {gzipped_size(pruned_file)} bytes")
    print(f"int8     accuracy {int8_accuracy:.4f}, gzip {gzipped_size(tflite_file)} bytes")


if __name__ == "__main__":
    main()
