"""Tiny real models for stage tests: a digits CNN trained for a few epochs, and stage contexts."""

from __future__ import annotations

import logging
from pathlib import Path

from pipeline import registry
from pipeline.recipe import configure
from pipeline.stage import StageContext


def digits():
    """The default digits splits (seed 0)."""
    return configure(registry.DATA, {"name": "digits"}, "data").load(seed=0)


def context(tmp_path: Path, name: str, index: int = 0, data=None, width: float = 1.0, build=None) -> StageContext:
    """A StageContext for stage `name` under `tmp_path`, building a small CNN of `width` (or calling `build(data)`)."""
    data = data if data is not None else digits()
    builder = configure(registry.MODELS, {"name": "small_cnn", "width": width}, "model")
    workdir = tmp_path / "stages" / f"{index}_{name}"
    workdir.mkdir(parents=True, exist_ok=True)
    return StageContext(
        name=name, index=index, workdir=workdir, run_dir=tmp_path, seed=0, data=data,
        build_model=(lambda: build(data)) if build else lambda: builder.build(data.input_shape, data.num_classes),
        log=logging.getLogger("test"),
    )


def accuracy(artifact, data) -> float:
    """Test accuracy of a Keras or TFLite artifact (no latency runs), on the inputs it takes (raw or preprocessed)."""
    import numpy as np

    from pipeline import litert
    from pipeline.artifact import ModelFormat

    x = data.test_inputs(raw=artifact.takes_raw_inputs)
    if artifact.format is ModelFormat.TFLITE:
        logits = litert.predict(artifact.path, x)
    else:
        logits = artifact.load_keras().predict(x, verbose=0)
    return float(np.mean(np.argmax(logits, -1) == data.y_test))
