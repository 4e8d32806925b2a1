"""Inference-only SavedModels: a serving signature and no Keras model inside.

`model.export(...)` (Keras 3), `tf.saved_model.save(...)` and most downloaded SavedModels hold a
traced function, not layers: they can be converted to TFLite (the converter reads SavedModels)
and measured, but not trained, pruned or clustered. tf-keras's own `model.save(..., save_format=
"tf")` writes `keras_metadata.pb` beside `saved_model.pb`; its absence tells the two apart
without importing TensorFlow, so recipes are checked before any work.

`SignatureModel` runs the serving signature behind the few methods of a Keras model that the
inference-only paths use (predict, count_params, get_weights, shapes), so measurement, the
distillation teacher and the quantize stage's gates treat both kinds alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import PipelineError

SIGNATURE = "serving_default"


def is_saved_model(path: str | Path) -> bool:
    """Whether `path` is a SavedModel folder."""
    return (Path(path) / "saved_model.pb").is_file()


def is_inference_only(path: str | Path) -> bool:
    """Whether `path` is a SavedModel folder without a tf-keras model in it."""
    return is_saved_model(path) and not (Path(path) / "keras_metadata.pb").is_file()


@dataclass(frozen=True)
class TensorInfo:
    """Name, shape and dtype of a signature's input or output, as Keras tensors describe theirs."""

    name: str
    shape: tuple
    dtype: Any


class SignatureModel:
    """The serving signature of an inference-only SavedModel, used like an inference-mode Keras model."""

    def __init__(self, path: str | Path, where: str = "model.path"):
        import tensorflow as tf

        self.path = Path(path)
        try:
            loaded = tf.saved_model.load(str(path))
        except Exception as error:  # noqa: BLE001 - the loader raises anything from OSError to parse errors
            raise PipelineError(f"{where}: cannot load the SavedModel {path} ({' '.join(str(error).split())[:200]})") from None
        function = loaded.signatures.get(SIGNATURE)
        if function is None:
            raise PipelineError(
                f"{where}: {path} has no '{SIGNATURE}' signature (it has {', '.join(loaded.signatures) or 'none'}); "
                "export it with model.export(...) or tf.saved_model.save(model, path, signatures=...)"
            )
        inputs, outputs = function.structured_input_signature[1], function.structured_outputs
        if len(inputs) != 1 or len(outputs) != 1:
            raise PipelineError(
                f"{where}: {path}'s serving signature has {len(inputs)} inputs and {len(outputs)} outputs; "
                "the pipeline takes models with one input and one output"
            )
        self.loaded, self._function = loaded, function  # the loaded object owns the variables
        (self._input_key, spec), = inputs.items()
        (self._output_key, result), = outputs.items()
        self.inputs = [TensorInfo(self._input_key, tuple(spec.shape), spec.dtype)]
        self.outputs = [TensorInfo(self._output_key, tuple(result.shape), result.dtype)]

    @property
    def input_shape(self) -> tuple:
        """(None, ...) like a Keras model's."""
        return self.inputs[0].shape

    @property
    def output_shape(self) -> tuple:
        """(None, classes) like a Keras model's."""
        return self.outputs[0].shape

    def __call__(self, x: Any, training: bool = False) -> Any:
        """The signature's output tensor for a batch (`training` is accepted and ignored)."""
        import tensorflow as tf

        batch = tf.cast(x, self.inputs[0].dtype)
        return self._function(**{self._input_key: batch})[self._output_key]

    def predict(self, x: np.ndarray, batch_size: int = 256, verbose: int = 0) -> np.ndarray:
        """Outputs for `x` as NumPy, in batches of `batch_size`."""
        if not len(x):
            return np.zeros((0, *self.output_shape[1:]), np.float32)
        return np.concatenate([np.asarray(self(x[i : i + batch_size])) for i in range(0, len(x), batch_size)])

    def frozen(self) -> Any:
        """The signature with its variables folded into constants, for the TFLite converter.

        A signature may also read state that inference does not need (a Keras 3 dropout's seed,
        after `tf.saved_model.save`); left as variables, it stops int8 calibration in the converter.
        """
        from pipeline.private_api import frozen_function

        return frozen_function(self._function)

    def get_weights(self) -> list[np.ndarray]:
        """Values of the variables the signature reads."""
        return [v.numpy() for v in self._function.variables]

    def count_params(self) -> int:
        """Number of values in the variables the signature reads."""
        return int(sum(np.prod(v.shape) for v in self._function.variables))
