"""The files written beside exported models: the metadata JSON and the labels file.

The JSON states each file's input contract (raw inputs with the preprocessing folded in, or
inputs after the listed steps), its serving signature, the class names, and the recipe, metrics,
I/O details, quantization and lineage. `pipeline.predict` needs nothing else.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.artifact import ModelArtifact, ModelFormat
from pipeline.stage import StageContext


def describe(
    shipped: ModelArtifact, exports: dict[str, Path], contracts: dict[str, dict[str, str]], ctx: StageContext, labels: Path
) -> dict[str, Any]:
    """Everything a consumer of the exported files needs to know about them.

    `shipped` is the export stage's output; its parent is the model the stage was given.
    """
    from pipeline.measure import measure
    from pipeline.recipe import MeasureParams

    model = shipped.parent or shipped
    # A copy of the incoming model under the same contract was measured by the runner already.
    same = model.metadata.get("serving") == shipped.metadata.get("serving")
    measured = ctx.measurements.get(model.stage) if same else None
    metrics = measured or measure(shipped, ctx.data, MeasureParams(latency_runs=10, warmup_runs=2))
    return {
        "files": {target: path.name for target, path in exports.items()},
        "classes": list(ctx.data.labels),
        "labels_file": labels.name,
        "input": ctx.data.preprocessing.to_json(ctx.data.input_shape),
        "serving": {target: serving_facts(target, exports[target], contracts[target]) for target in exports},
        "recipe": dict(ctx.config) or None,
        "metrics": dict(metrics),
        "metrics_split": "test",
        "io": io_details(shipped),
        "quantization": {
            key: model.metadata.get(key)
            for key in ("quantization", "calibration_samples", "sparse_encoding", "fully_integer", "float_layers")
        },
        # Choices (fallback layers, planned sparsity, gates) were made on the validation split; the
        # metrics above are the test split's, measured on what ships.
        "budget": ctx.budget.describe() if ctx.budget is not None else None,
        "lineage": [
            {
                "stage": a.stage, "format": a.format.value, "file": a.path.name,
                "effects": sorted(effect.value for effect in a.effects),
                "metrics": a.metrics, "gate": a.gate, "facts": plain(a.metadata),
            }
            for a in reversed(model.lineage())
        ],
    }


def io_details(model: ModelArtifact) -> dict[str, Any]:
    """Name, shape, dtype and (for TFLite) scale and zero point of each input and output."""
    if model.format is ModelFormat.TFLITE:
        from pipeline import litert

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


def write(
    model: ModelArtifact, exports: dict[str, Path], contracts: dict[str, dict[str, str]], ctx: StageContext, stem: Path
) -> list[Path]:
    """Write `stem`.labels.txt and `stem`.json; their paths, the JSON last."""
    labels = stem.with_name(f"{stem.name}.labels.txt")
    labels.write_text("".join(f"{name}\n" for name in ctx.data.labels))
    path = stem.with_suffix(".json")
    path.write_text(json.dumps(describe(model, exports, contracts, ctx, labels), indent=2, default=str) + "\n")
    return [labels, path]
