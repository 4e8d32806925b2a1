"""The metadata JSON written beside exported models: recipe, lineage, metrics, I/O and quantization."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.artifact import ModelArtifact, ModelFormat
from pipeline.stage import StageContext


def describe(model: ModelArtifact, exports: dict[str, Path], ctx: StageContext) -> dict[str, Any]:
    """Everything a consumer of the exported files needs to know about them."""
    from pipeline.measure import measure
    from pipeline.recipe import MeasureParams

    shipped = ModelArtifact(exports.get(model.format.value, model.path), model.format, ctx.name, model, model.metadata)
    # The shipped file is a copy of the incoming model, which the runner has measured already.
    metrics = ctx.measurements.get(model.stage) or measure(shipped, ctx.data, MeasureParams(latency_runs=10, warmup_runs=2))
    return {
        "recipe": dict(ctx.config) or None,
        "files": {target: path.name for target, path in exports.items()},
        "metrics": dict(metrics),
        "metrics_split": "test",
        "io": io_details(shipped),
        "quantization": {key: model.metadata.get(key) for key in ("quantization", "calibration_samples", "sparse_encoding", "fully_integer")},
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
    keras_model = model.load_keras()
    return {
        "inputs": [{"name": t.name, "shape": list(t.shape), "dtype": t.dtype.name} for t in keras_model.inputs],
        "outputs": [{"name": t.name, "shape": list(t.shape), "dtype": t.dtype.name} for t in keras_model.outputs],
    }


def plain(value: Any) -> Any:
    """`value` with anything JSON cannot hold turned into a string."""
    return json.loads(json.dumps(value, default=str))


def write(model: ModelArtifact, exports: dict[str, Path], ctx: StageContext, path: Path) -> Path:
    """Write the metadata JSON to `path`."""
    path.write_text(json.dumps(describe(model, exports, ctx), indent=2, default=str) + "\n")
    return path
