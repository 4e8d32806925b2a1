"""What stages hand to each other: a model file on disk plus where it came from."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any


class ModelFormat(str, Enum):
    """On-disk model formats that stages exchange and the runner knows how to measure."""

    KERAS = "keras"
    SAVED_MODEL = "saved_model"
    TFLITE = "tflite"


@dataclass(frozen=True)
class ModelArtifact:
    """A model file (or SavedModel directory) and its lineage.

    `parent` is the artifact this one was made from, so a later stage can reach an earlier
    format: export finds the Keras model behind an int8 TFLite file this way.
    `metadata` holds facts a later stage or the export needs (quantization mode, target sparsity).
    """

    path: Path
    format: ModelFormat
    stage: str
    parent: ModelArtifact | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def takes_raw_inputs(self) -> bool:
        """Whether the model takes raw inputs (the data's preprocessing folded in; `metadata["serving"]`)."""
        return self.metadata.get("serving", {}).get("inputs") == "raw"

    def lineage(self) -> list[ModelArtifact]:
        """This artifact, then its parent, and so on back to the first model."""
        chain, current = [], self
        while current is not None:
            chain.append(current)
            current = current.parent
        return chain

    def nearest(self, fmt: ModelFormat) -> ModelArtifact | None:
        """The most recent artifact of format `fmt` in this lineage, or None."""
        return next((a for a in self.lineage() if a.format == fmt), None)

    def load_keras(self) -> Any:
        """The model as a tf-keras object (Keras file or SavedModel), uncompiled."""
        import tf_keras as keras

        if self.format is ModelFormat.TFLITE:
            raise ValueError(f"{self.path} is a TFLite file, not a Keras model")
        return keras.models.load_model(self.path, compile=False)
