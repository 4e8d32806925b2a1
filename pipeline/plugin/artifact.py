"""What stages hand to each other: a model file on disk plus where it came from."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any


class Effect(str, Enum):
    """Something a stage did to a model that a later stage may rely on or must keep."""

    PRUNED = "pruned"  # many weights held at exactly zero
    CLUSTERED = "clustered"  # each kernel holds a few shared values
    QUANTIZE_AWARE = "quantize_aware"  # trained with simulated int8 arithmetic
    SPARSITY_PLANNED = "sparsity_planned"  # carries a per-layer sparsity plan (a sensitivity stage's) for prune
    DISTILLED = "distilled"  # a student with a teacher that later fine-tuning may keep learning from
    CHANNEL_PRUNED = "channel_pruned"  # whole channels removed: narrower than the model it was made from


# Effects in the model's shape rather than its weight values: no training undoes them.
STRUCTURAL = frozenset({Effect.CHANNEL_PRUNED})


class ModelFormat(str, Enum):
    """On-disk model formats that stages exchange and the runner knows how to measure.

    KERAS is a tf-keras model (a .keras file, or a tf-keras SavedModel); SAVED_MODEL an
    inference-only SavedModel: a serving signature without a Keras model, which can be run and
    converted but not trained.
    """

    KERAS = "keras"
    SAVED_MODEL = "saved_model"
    TFLITE = "tflite"


@dataclass(frozen=True)
class ModelArtifact:
    """A model file (or SavedModel directory) and its lineage.

    `parent` is the artifact this one was made from, so a later stage can reach an earlier
    format: export finds the Keras model behind an int8 TFLite file this way.
    `metadata` holds facts a later stage or the export needs (quantization mode, target sparsity).
    `effects` is what the model has been through (pruned, clustered, ...), as the stages declare.
    `metrics` are numbers the stage measured about its own work (a teacher's accuracy) and `gate`
    the accuracies a ship gate compared; the runner logs both. `exports` are the files it shipped.
    `reports` name files beside the model file (tables, plots) the stage wrote about its own work;
    the runner logs them to MLflow under the stage's name.
    """

    path: Path
    format: ModelFormat
    stage: str
    parent: ModelArtifact | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    effects: frozenset[Effect] = frozenset()
    metrics: dict[str, float] = field(default_factory=dict)
    gate: dict[str, float] = field(default_factory=dict)
    exports: tuple[Path, ...] = ()
    reports: tuple[str, ...] = ()

    @property
    def takes_raw_inputs(self) -> bool:
        """Whether the model takes raw inputs (the data's preprocessing folded in; `metadata["serving"]`)."""
        return self.metadata.get("serving", {}).get("inputs") == "raw"

    def lineage(self) -> list[ModelArtifact]:
        """This artifact, then its parent, and so on back to the first model."""
        chain: list[ModelArtifact] = []
        current: ModelArtifact | None = self
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

        if self.format is not ModelFormat.KERAS:
            raise ValueError(f"{self.path} is a {self.format.value} file, not a Keras model")
        return keras.models.load_model(self.path, compile=False)

    def load_model(self) -> Any:
        """A model to run for inference: the tf-keras model, or an inference-only SavedModel's signature."""
        if self.format is ModelFormat.SAVED_MODEL:
            from pipeline.models.savedmodel import SignatureModel

            return SignatureModel(self.path)
        return self.load_keras()
