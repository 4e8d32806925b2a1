"""`python -m pipeline.predict EXPORT INPUTS...`: class names and scores for raw inputs.

EXPORT is a run's export folder or one exported file (.tflite, .keras, .h5 or a SavedModel
folder); the metadata JSON beside it says what the model takes. INPUTS are a CSV file, an .npz
file, image files or a folder of them; for a text model, .txt files, a folder of them (class
subfolders give labels) or a CSV file with the text column, tokenized with the shipped vocabulary.
The inputs are read as the data source read them, put through the preprocessing steps the model
does not hold itself, and run through the model
(TFLite files through the LiteRT interpreter). Inputs with labels (a CSV label column, class
subfolders, an .npz `y`) also print the accuracy. Nothing from the run is needed but the export.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.commands.raw_inputs import RawInputs, read
from pipeline.data.preprocessing import Preprocessing
from pipeline.data.tokenizer import Tokenizer
from pipeline.errors import PipelineError, report

# Which export a folder is run as when --format is not given: the file that ships first.
PREFERENCE = ("tflite", "keras", "saved_model", "h5")


@dataclass(frozen=True)
class Export:
    """One exported model and what its metadata JSON says about it."""

    path: Path
    target: str
    serving: dict[str, Any]
    classes: list[str]
    preprocessing: Preprocessing
    shape: tuple[int, ...]
    tokenizer: Tokenizer | None = None
    task: dict[str, Any] | None = None  # the JSON's `task` (None: an export from before tasks, a classifier)

    @property
    def task_name(self) -> str:
        """classification, regression or multilabel."""
        return (self.task or {}).get("name", "classification")


def find_export(given: Path, target: str | None) -> Export:
    """The exported model at `given` (a file, a SavedModel folder or an export folder) and its JSON."""
    if not given.exists():
        raise PipelineError(f"{given}: no such file or folder; give a run's export/ folder or an exported model file")
    folder = given if given.is_dir() and not (given / "saved_model.pb").exists() else given.parent
    for json_path in sorted(folder.glob("*.json")):
        meta = read_metadata(json_path)
        files = meta.get("files", {})
        if folder != given:  # a file was named: its JSON lists it
            matches = [t for t, name in files.items() if name == given.name]
            if matches and target in (None, *matches):
                return export_of(meta, folder / given.name, matches[0])
            continue
        chosen = target or next((t for t in PREFERENCE if t in files), None)
        if chosen is not None and chosen in files:
            return export_of(meta, folder / files[chosen], chosen)
        raise PipelineError(f"--format {chosen}: {json_path.name} lists no such export (it has {', '.join(files)}); pick one of those")
    raise PipelineError(
        f"{given}: no export metadata (NAME.json listing the model) in {folder}; "
        "export with stages.export.metadata=true and keep the JSON beside the model"
    )


def read_metadata(path: Path) -> dict[str, Any]:
    """An export's metadata JSON (other JSON files give an empty dict)."""
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise PipelineError(f"{path}: cannot read the export metadata ({error}); export the model again") from None
    return meta if isinstance(meta, dict) and "serving" in meta and "input" in meta else {}


def export_of(meta: dict[str, Any], path: Path, target: str) -> Export:
    """The Export for `target` of the metadata `meta`."""
    described = meta["input"]
    return Export(
        path, target, meta["serving"][target], meta["classes"], Preprocessing.from_json(described), tuple(described["shape"]),
        shipped_tokenizer(meta.get("tokenizer"), path.parent), meta.get("task"),
    )


def shipped_tokenizer(described: dict[str, Any] | None, folder: Path) -> Tokenizer | None:
    """The tokenizer a text model's export ships (its rules from the JSON, its vocabulary file), else None."""
    if not described:
        return None
    vocabulary = folder / str(described.get("vocabulary_file"))
    if not vocabulary.is_file():
        raise PipelineError(f"{vocabulary}: the vocabulary file of this text model is missing; keep it beside the model")
    return Tokenizer.from_files(described, vocabulary)


def model_inputs(export: Export, inputs: RawInputs) -> np.ndarray:
    """The inputs as the model takes them: raw, or after the steps it does not hold."""
    if export.serving.get("inputs") == "preprocessed":
        return export.preprocessing.apply(inputs.x)
    return inputs.x


def outputs(export: Export, x: np.ndarray, threads: int) -> np.ndarray:
    """The model's outputs (logits or probabilities, as float) for the batch `x`."""
    if export.target == "tflite":
        from pipeline.measure import litert

        return litert.predict(export.path, x, threads)
    if export.target == "saved_model":
        import tensorflow as tf

        signature = tf.saved_model.load(str(export.path)).signatures[export.serving["signature"]]
        return signature(**{export.serving["input"]: tf.constant(x)})[export.serving["output"]].numpy()
    import tf_keras as keras

    from pipeline.measure.metrics import keras_predict

    return keras_predict(keras.models.load_model(export.path, compile=False), x)[1]


def scores(export: Export, y: np.ndarray) -> np.ndarray:
    """Class probabilities: the outputs, through a softmax when they are logits."""
    if export.serving.get("outputs") == "probabilities":
        return y
    shifted = np.exp(y - y.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table, readable as plain text."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def predict(export_path: Path, input_paths: list[Path], target: str | None = None, threads: int = 1) -> str:
    """The printed report: one row per input (class, score, and label when known), then the accuracy."""
    export = find_export(export_path, target)
    inputs = read(input_paths, export.preprocessing, export.shape, export.classes, export.tokenizer, export.task_name)
    y = outputs(export, model_inputs(export, inputs), threads)
    if export.task_name != "classification":
        return task_report(export, inputs, y)
    probabilities = scores(export, y)
    best = np.argmax(y, axis=-1)  # the runner's accuracy takes the argmax of the raw outputs too
    header = ["input", "class", "score"] + (["label"] if inputs.y is not None else [])
    rows = [
        [name, export.classes[k], f"{probabilities[i, k]:.4f}"] + ([export.classes[inputs.y[i]]] if inputs.y is not None else [])
        for i, (name, k) in enumerate(zip(inputs.names, best))
    ]
    lines = [f"{export.path.name} ({export.target}, {export.serving.get('inputs')} inputs):", table(header, rows)]
    if inputs.y is not None:
        correct = int(np.sum(best == inputs.y))
        lines.append(f"accuracy: {correct / len(best):.4f} ({correct} of {len(best)})")
    return "\n".join(lines)


def task_report(export: Export, inputs: Any, y: np.ndarray) -> str:
    """Regression values (in the labels' unit) or multi-label predictions for each input, then the task's
    metrics when the inputs have labels."""
    from pipeline.measure.tasks import sigmoid, task_named

    task, facts = task_named(export.task_name), export.task or {}
    lines = [f"{export.path.name} ({export.target}, {export.serving.get('inputs')} inputs, {task.name}):"]
    if task.name == "regression":
        values = y.reshape(len(y), -1)[:, 0]
        scale = facts.get("target_scale") or {}
        if export.serving.get("outputs") != "values" and scale:  # a model giving standardised values
            values = values * scale["std"] + scale["mean"]
        header = ["input", "value"] + (["label"] if inputs.y is not None else [])
        rows = [
            [name, f"{values[i]:.6g}"] + ([f"{inputs.y[i]:.6g}"] if inputs.y is not None else []) for i, name in enumerate(inputs.names)
        ]
        logits = values
    else:
        threshold = float(facts.get("threshold", 0.5))
        probabilities = y if export.serving.get("outputs") == "probabilities" else sigmoid(y)
        clipped = np.clip(probabilities, 1e-7, 1 - 1e-7)
        logits = np.log(clipped / (1 - clipped))
        names = facts.get("labels") or export.classes
        header = ["input", f"labels (probability >= {threshold:g})", "scores"] + (["true labels"] if inputs.y is not None else [])
        rows = [
            [name, " ".join(n for n, p in zip(names, probabilities[i]) if p >= threshold) or "-",
             " ".join(f"{p:.3f}" for p in probabilities[i])]
            + ([" ".join(n for n, t in zip(names, inputs.y[i]) if t >= 0.5) or "-"] if inputs.y is not None else [])
            for i, name in enumerate(inputs.names)
        ]
        lines[0] = lines[0][:-2] + f", threshold {threshold:g} chosen on validation):"
    lines.append(table(header, rows))
    if inputs.y is not None:
        found = task.evaluate(logits, inputs.y, float(facts.get("threshold", 0.5)))
        shown = ", ".join(f"{title}: {found[metric]:.4g}" for title, metric in zip(task.titles, task.metrics))
        lines.append(f"{shown} ({len(y)} examples)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Parse the command line, predict, print; user mistakes end in one `error:` line."""
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.predict",
        description="Predictions of an exported model for raw inputs: class names and scores, values or labels.",
    )
    parser.add_argument("export", type=Path, help="a run's export/ folder, or an exported .tflite/.keras/.h5/SavedModel")
    parser.add_argument(
        "inputs", type=Path, nargs="+",
        help="a CSV file, an .npz file, image files or a folder of images; for text, .txt files, a folder of them or a CSV file",
    )
    parser.add_argument(
        "--format", choices=PREFERENCE, help="which export of a folder to run (default: the first of tflite, keras, saved_model, h5)"
    )
    parser.add_argument("--threads", type=int, default=1, help="LiteRT interpreter threads (default 1)")
    args = parser.parse_args(argv)
    from pipeline.run import quiet

    quiet.install()  # the libraries' start-up notes stay off the terminal, as for runs
    try:
        print(predict(args.export, args.inputs, args.format, args.threads))
    except PipelineError as error:
        report(error)


if __name__ == "__main__":
    main()
