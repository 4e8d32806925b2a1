"""The runner's measurements of an artifact, the same for every stage.

Size and gzip size of the file as shipped, parameter count and actual sparsity (zeros among
weight matrices and kernels, the tensors pruning acts on), multiply-accumulates per example
(pipeline.measure.macs), test accuracy, validation accuracy (what a search may steer by; the test split
never steers anything), and batch-1 latency (median and p90 after warm-up). TFLite files are run
through the LiteRT interpreter.
"""

from __future__ import annotations

import gzip
import io
import tarfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config.settings import MeasureParams
from pipeline.data import Dataset
from pipeline.data.streaming import MEASURE_BATCH, in_batches
from pipeline.measure import litert
from pipeline.measure.macs import keras_macs, tflite_macs
from pipeline.measure.tasks import best_threshold, task_named
from pipeline.plugin.artifact import ModelArtifact, ModelFormat

METRICS = (
    "size_bytes", "gzip_bytes", "params", "sparsity", "macs", "accuracy", "val_accuracy", "latency_p50_ms",
    "latency_p90_ms",
)


def metric_names(task: str = "classification") -> tuple[str, ...]:
    """Every measurement the runner takes for `task`: METRICS, the accuracies replaced by the task's metrics."""
    if task == "classification":
        return METRICS
    return (*(name for name in METRICS if "accuracy" not in name), *task_named(task).measurement_names())


def measure(artifact: ModelArtifact, data: Dataset, params: MeasureParams) -> dict[str, float]:
    """All of `metric_names(data.task)` for `artifact`: the task's metrics on the test split (reported,
    never chosen on) and on the validation split (`val_accuracy`, `val_mae`, ...: what choices and the
    budget read; NaN when the data has none), each raw or preprocessed as the model takes it."""
    size, gzipped = file_sizes(artifact.path)
    outputs = artifact.metadata.get("serving", {}).get("outputs", "logits")
    if artifact.takes_raw_inputs:  # measured on what a user feeds it: raw test and validation inputs
        data = data.raw()
    if artifact.format is ModelFormat.TFLITE:
        model_metrics = measure_tflite(artifact.path, data, params, outputs)
    else:
        model_metrics = measure_keras(artifact, data, params, outputs)
    return {"size_bytes": size, "gzip_bytes": gzipped, **model_metrics}


def file_sizes(path: Path) -> tuple[int, int]:
    """Bytes on disk and bytes after gzip -9; a directory counts as a tar of its files."""
    if path.is_dir():
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as archive:
            archive.add(path, arcname=path.name)
        payload = buffer.getvalue()
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    else:
        payload = path.read_bytes()
        size = len(payload)
    return size, len(gzip.compress(payload, compresslevel=9, mtime=0))


def sparsity_of(tensors: list[tuple[tuple[int, ...], int, int | None]]) -> float:
    """Share of zeros among tensors of rank >= 2 (kernels and weight matrices)."""
    weights = [(count, zeros) for shape, count, zeros in tensors if len(shape) >= 2 and zeros is not None]
    total = sum(count for count, _ in weights)
    return sum(zeros for _, zeros in weights) / total if total else 0.0


def percentiles(timings_ms: np.ndarray) -> dict[str, float]:
    """Median and 90th percentile of per-run milliseconds."""
    return {
        "latency_p50_ms": float(np.percentile(timings_ms, 50)),
        "latency_p90_ms": float(np.percentile(timings_ms, 90)),
    }


def measure_tflite(path: Path, data: Dataset, params: MeasureParams, outputs: str = "logits") -> dict[str, float]:
    """Parameters, sparsity, accuracy and latency of a .tflite file through LiteRT."""
    tensors = litert.constant_tensors(path)
    test = litert.predict(path, data.x_test, params.threads)
    val = litert.predict(path, data.x_val, params.threads)
    timings = litert.latency_ms(path, data.x_test[0], params.latency_runs, params.warmup_runs, params.threads)
    return {
        "params": float(sum(count for _, count, _ in tensors)),
        "sparsity": sparsity_of(tensors),
        "macs": float(tflite_macs(path)),
        **accuracies(test, val, data, outputs),
        **percentiles(timings),
    }


def accuracies(test: np.ndarray, val: np.ndarray, data: Dataset, outputs: str = "logits") -> dict[str, float]:
    """The task's test and validation metrics from the outputs for the test and the validation examples
    (`outputs` names what the model gives: logits, probabilities, or values in the labels' unit)."""
    task = task_named(data.task)
    test, val = comparable(test, data, outputs), comparable(val, data, outputs)
    threshold = best_threshold(val, data.y_val) if data.task == "multilabel" else 0.5  # chosen on validation
    found = {task.test_key(k): v for k, v in task.evaluate(test, labels_in_unit(data.y_test, data), threshold).items()}
    found.update({task.val_key(k): v for k, v in task.evaluate(val, labels_in_unit(data.y_val, data), threshold).items()})
    return {**found, "threshold": threshold} if data.task == "multilabel" else found


def comparable(outputs: np.ndarray, data: Dataset, given: str) -> np.ndarray:
    """Model outputs as the task's metrics take them: regression values in the labels' unit (a Keras model
    gives standardised ones), multi-label logits (a served model may give sigmoid probabilities)."""
    if data.task == "regression" and given != "values":
        return data.in_unit(outputs)
    if data.task == "multilabel" and given == "probabilities":
        clipped = np.clip(outputs.astype(np.float64), 1e-7, 1 - 1e-7)
        return np.log(clipped / (1 - clipped))
    return outputs


def labels_in_unit(y: np.ndarray, data: Dataset) -> np.ndarray:
    """Labels as the metrics compare them: regression targets back in their own unit."""
    return data.in_unit(y) if data.task == "regression" else y


def primary_score(outputs: np.ndarray, y: np.ndarray, data: Dataset, given: str = "logits") -> float:
    """The task's primary metric (accuracy, MAE, micro-F1) of `outputs` against labels `y` (a split of
    `data`); multi-label outputs are read at the threshold best on these examples (validation)."""
    task = task_named(data.task)
    found = comparable(outputs, data, given)
    threshold = best_threshold(found, y) if data.task == "multilabel" else 0.5
    return task.evaluate(found, labels_in_unit(y, data), threshold)[task.primary]


def tflite_score(path: Path, data: Dataset, given: str = "logits", threads: int = 1) -> float:
    """The task's primary metric of a .tflite file on the validation split, through LiteRT."""
    return primary_score(litert.predict(path, data.x_val, threads), data.y_val, data, given)


def keras_score(model: Any, data: Dataset, given: str = "logits") -> float:
    """The task's primary metric of a Keras model (or a serving signature) on the validation split."""
    return primary_score(keras_predict(model, data.x_val)[1], data.y_val, data, given)


def validation_score(artifact: ModelArtifact, data: Dataset) -> float:
    """The task's primary metric on the validation split (accuracy, MAE, micro-F1), for a model the runner
    does not otherwise measure: the saved model a recipe starts from."""
    outputs = artifact.metadata.get("serving", {}).get("outputs", "logits")
    if artifact.takes_raw_inputs:
        data = data.raw()
    if artifact.format is ModelFormat.TFLITE:
        return tflite_score(artifact.path, data, outputs)
    return keras_score(artifact.load_model(), data, outputs)


def keras_predict(model, x: np.ndarray) -> tuple[Any, np.ndarray]:
    """A traced forward pass for any batch size, and its outputs for `x` (an array or a streamed
    split) in batches of 256.

    One graph serves both the accuracy pass and the batch-1 timing: tracing costs more than the
    whole test pass on small models. `pipeline.predict` runs Keras exports through it too.
    """
    import tensorflow as tf

    forward = tf.function(
        lambda batch: model(batch, training=False),
        input_signature=[tf.TensorSpec((None, *x.shape[1:]), tf.as_dtype(x.dtype))],
    )
    return forward, batched(forward, x)


def batched(forward: Any, x: np.ndarray, size: int = MEASURE_BATCH) -> np.ndarray:
    """`forward` applied to `x` (an array or a streamed split) in batches of `size`, outputs concatenated."""
    return np.concatenate([forward(batch).numpy() for batch in in_batches(x, size)])


def hits(logits: np.ndarray, labels: np.ndarray) -> float:
    """Share of examples whose highest output is the label."""
    return float(np.mean(np.argmax(logits, axis=-1) == labels))


def validation_accuracy(artifact: ModelArtifact, data: Dataset) -> float:
    """Accuracy on the validation split alone (raw or preprocessed, as the model takes it), for a
    model the runner does not otherwise measure: the saved model a recipe starts from."""
    if artifact.takes_raw_inputs:
        data = data.raw()
    if artifact.format is ModelFormat.TFLITE:
        return tflite_accuracy(artifact.path, data.x_val, data.y_val)
    return hits(keras_predict(artifact.load_model(), data.x_val)[1], data.y_val)


def tflite_accuracy(path: Path, x: np.ndarray, y: np.ndarray, threads: int = 1) -> float:
    """Accuracy of a .tflite file on `x`, `y` through LiteRT."""
    return hits(litert.predict(path, x, threads), y)


def measure_keras(artifact: ModelArtifact, data: Dataset, params: MeasureParams, outputs: str = "logits") -> dict[str, float]:
    """Parameters, sparsity, accuracy and latency of a Keras model or SavedModel (inference-only ones too)."""
    import tensorflow as tf

    model = artifact.load_model()
    tensors = [(w.shape, w.size, w.size - int(np.count_nonzero(w))) for w in model.get_weights()]
    forward, test = keras_predict(model, data.x_test)
    val = batched(forward, data.x_val) if len(data.x_val) else test[:0]

    sample = tf.constant(data.x_test[:1])
    for _ in range(params.warmup_runs):
        forward(sample)
    timings = np.empty(params.latency_runs)
    for i in range(params.latency_runs):
        start = time.perf_counter()
        forward(sample).numpy()
        timings[i] = (time.perf_counter() - start) * 1000
    return {
        "params": float(model.count_params()),
        "sparsity": sparsity_of(tensors),
        # An inference-only SavedModel is a serving signature without layers to count.
        **({"macs": float(keras_macs(model))} if hasattr(model, "layers") else {}),
        **accuracies(test, val, data, outputs),
        **percentiles(timings),
    }
