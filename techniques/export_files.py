"""The exported files: the models in each format, and beside them the metadata JSON, the labels file and,
for text, the tokenizer's vocabulary file.

The JSON states each file's input contract (raw inputs with the preprocessing folded in, or
inputs after the listed steps), its serving signature, the class names, and the recipe, metrics,
I/O details, quantization and lineage; for text, the tokenizer's rules (`tokenizer`), so that an app
tokenizes exactly as training did. `pipeline.predict` needs nothing else.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.data import Dataset
from pipeline.plugin.artifact import ModelArtifact, ModelFormat
from pipeline.run.budget import Budget
from techniques.serving import serving_model


def export_metadata(
    shipped: ModelArtifact, exports: dict[str, Path], contracts: dict[str, dict[str, str]], labels: Path, data: Dataset,
    metrics: Mapping[str, float], recipe: Mapping[str, Any], budget: Budget | None, vocabulary: Path | None = None,
) -> dict[str, Any]:
    """Everything a consumer of the exported files needs to know about them: the content of NAME.json.

    `shipped` is the export stage's output; its parent is the model the stage was given. `metrics`
    are the test-split measurements of what ships, `recipe` the run's resolved configuration and
    `budget` the accuracy budget the choices were made within (None without one). `vocabulary` is
    the tokenizer's vocabulary file of text data.
    """
    model = shipped.parent or shipped
    return {
        "files": {target: path.name for target, path in exports.items()},
        "task": task_description(data, metrics),
        "classes": list(data.labels),
        "labels_file": labels.name,
        "input": input_description(data),
        "tokenizer": data.tokenizer.to_json(vocabulary.name) if data.tokenizer is not None and vocabulary else None,
        "serving": {target: serving_facts(target, exports[target], contracts[target]) for target in exports},
        "recipe": dict(recipe) or None,
        "metrics": dict(metrics),
        "metrics_split": "test",
        "io": io_details(shipped),
        "quantization": {
            key: model.metadata.get(key)
            for key in ("quantization", "calibration_samples", "sparse_encoding", "fully_integer", "float_layers")
        },
        # Choices (fallback layers, planned sparsity, gates) were made on the validation split; the
        # metrics above are the test split's, measured on what ships.
        "budget": budget.as_metadata() if budget is not None else None,
        "lineage": [
            {
                "stage": a.stage, "format": a.format.value, "file": a.path.name,
                "effects": sorted(effect.value for effect in a.effects),
                "metrics": a.metrics, "gate": a.gate, "facts": plain(a.metadata),
            }
            for a in reversed(model.lineage())
        ],
    }


def task_description(data: Dataset, metrics: Mapping[str, float]) -> dict[str, Any]:
    """The task the model was trained for and what reading its outputs needs: for regression the
    target scaling the shipped model already undoes (its outputs are in the labels' unit), for
    multi-label the label names and the probability threshold chosen on the validation split."""
    from pipeline.measure.tasks import task_named

    task = task_named(data.task)
    found: dict[str, Any] = {"name": task.name, "primary_metric": task.primary, "higher_is_better": task.higher_is_better}
    if data.target_scale is not None:
        found["target_scale"] = {"mean": data.target_scale[0], "std": data.target_scale[1], "undone_in_model": True}
    if task.name == "multilabel":
        found.update(labels=list(data.labels), threshold=float(metrics.get("threshold", 0.5)))
    return found


def input_description(data: Dataset) -> dict[str, Any]:
    """What the model takes: the preprocessing's description, or for text int32 token ids of texts
    (`features` names the CSV column they came from; empty for a folder of .txt files)."""
    if data.tokenizer is None:
        return data.preprocessing.to_json(data.input_shape)
    return {
        "kind": "text", "shape": list(data.input_shape), "dtype": "int32", "features": list(data.preprocessing.features),
        "label_column": data.preprocessing.label, "steps": [],
    }


def io_details(model: ModelArtifact) -> dict[str, Any]:
    """Name, shape, dtype and (for TFLite) scale and zero point of each input and output."""
    if model.format is ModelFormat.TFLITE:
        from pipeline.measure import litert

        runner = litert.interpreter(model.path, threads=1)

        def tensor(detail: dict) -> dict[str, Any]:
            scale, zero_point = detail["quantization"]
            return {"name": detail["name"], "shape": [int(d) for d in detail["shape"]],
                    "dtype": np.dtype(detail["dtype"]).name, "scale": float(scale), "zero_point": int(zero_point)}

        return {"inputs": [tensor(d) for d in runner.get_input_details()],
                "outputs": [tensor(d) for d in runner.get_output_details()]}
    keras_model = model.load_model()
    return {
        "inputs": [{"name": t.name, "shape": list(t.shape), "dtype": t.dtype.name} for t in keras_model.inputs],
        "outputs": [{"name": t.name, "shape": list(t.shape), "dtype": t.dtype.name} for t in keras_model.outputs],
    }


def plain(value: Any) -> Any:
    """`value` with anything JSON cannot hold turned into a string."""
    return json.loads(json.dumps(value, default=str))


def serving_facts(target: str, path: Path, contract: dict[str, str]) -> dict[str, Any]:
    """One export's contract: raw or preprocessed inputs, outputs, signature and tensor names, and for
    TFLite the input and output tensors' dtype, scale and zero point."""
    facts: dict[str, Any] = dict(contract)
    if target == "tflite":
        io = io_details(ModelArtifact(path, ModelFormat.TFLITE, "export"))
        facts.update(input_tensor=io["inputs"][0], output_tensor=io["outputs"][0])
    return facts


def write_metadata(
    model: ModelArtifact, exports: dict[str, Path], contracts: dict[str, dict[str, str]], stem: Path, data: Dataset,
    metrics: Mapping[str, float], recipe: Mapping[str, Any], budget: Budget | None,
) -> list[Path]:
    """Write `stem`.labels.txt, for text `stem`.vocab.txt, and `stem`.json (see `export_metadata`); their paths, the JSON last."""
    labels = stem.with_name(f"{stem.name}.labels.txt")
    labels.write_text("".join(f"{name}\n" for name in data.labels))
    vocabulary = None
    if data.tokenizer is not None:
        vocabulary = data.tokenizer.write_vocabulary(stem.with_name(f"{stem.name}.vocab.txt"))
    path = stem.with_suffix(".json")
    facts = export_metadata(model, exports, contracts, labels, data, metrics, recipe, budget, vocabulary)
    path.write_text(json.dumps(facts, indent=2, default=str) + "\n")
    return [labels, *([vocabulary] if vocabulary else []), path]


def write_model(
    source: ModelArtifact, target: str, stem: Path, serving: dict[str, str], data: Dataset, workdir: Path, where: str,
    log: logging.Logger,
) -> Path:
    """Write `source` as `target` next to `stem` (Keras formats under the `serving` contract); the written path.

    `workdir` holds intermediate files; `where` is the config key errors name (`stages.NAME.formats`).
    """
    if target == "tflite":
        return Path(shutil.copyfile(source.path, stem.with_suffix(".tflite")))
    if target == "saved_model" and source.format is ModelFormat.SAVED_MODEL:
        path = stem.parent / f"{stem.name}_saved_model"
        shutil.rmtree(path, ignore_errors=True)
        return Path(shutil.copytree(source.path, path))
    keras_model = serving_model(
        source.load_keras(), data.preprocessing, serving["inputs"], serving["outputs"], data.target_scale, data.task
    )
    if target == "keras3":
        served = data.raw() if serving["inputs"] == "raw" else data
        return write_keras3(keras_model, stem.parent / f"{stem.name}_keras3.keras", served, workdir, where, log)
    if target == "keras":
        path = stem.with_suffix(".keras")
        keras_model.save(path)
        return path
    if target == "h5":
        path = stem.with_suffix(".h5")
        keras_model.save(path, save_format="h5")
        return path
    path = stem.parent / f"{stem.name}_saved_model"
    keras_model.save(path, save_format="tf")
    return path


def write_keras3(keras_model: Any, path: Path, data: Dataset, workdir: Path, where: str, log: logging.Logger) -> Path:
    """`keras_model` as a Keras 3 file, checked on a batch of `data` (in a separate process)."""
    from pipeline.models.keras3 import sample_of, to_keras3

    keras_file = workdir / "keras3_source.keras"
    keras_model.save(keras_file)
    report = to_keras3(keras_file, path, sample_of(data), where)
    log.info(
        "    Keras 3 copy matches the tf-keras model on %d examples (largest difference %.2g)", report["examples"], report["max_abs_diff"]
    )
    return path
