"""export: write the shipped files (TFLite, Keras, H5, SavedModel) to the run's export folder."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field

from pipeline.artifact import Effect, ModelArtifact, ModelFormat
from pipeline.errors import PipelineError
from pipeline.schema import Params
from pipeline.stage import Stage, StageContext

Target = Literal["tflite", "keras", "h5", "saved_model"]

# Which artifact in the lineage each export target is written from.
SOURCE_FORMAT = {
    "tflite": ModelFormat.TFLITE,
    "keras": ModelFormat.KERAS,
    "h5": ModelFormat.KERAS,
    "saved_model": ModelFormat.KERAS,
}


class ExportParams(Params):
    """Parameters of the export stage."""

    formats: list[Target] = Field(
        default_factory=lambda: ["tflite", "keras"], min_length=1,
        description="Files to write: tflite, keras (.keras), h5, saved_model.",
    )
    name: str = Field("model", pattern=r"^[\w.-]+$", description="Base name of the exported files.")
    metadata: bool = Field(
        True, description="Also write NAME.json: recipe, metrics, input/output details, quantization, lineage."
    )


class ExportStage(Stage):
    """Copy or convert the latest model of each requested format into `<run>/export/`.

    The incoming model is handed on unchanged (as its exported copy); a Keras export after
    quantization writes the Keras model the TFLite file was converted from.
    """

    Config: ClassVar = ExportParams
    accepts: ClassVar = frozenset(ModelFormat)
    cacheable: ClassVar = False  # cheap, and its files belong to this run's export/ folder

    @classmethod
    def output_format(cls, input_format: ModelFormat | None) -> ModelFormat:
        return input_format  # type: ignore[return-value]

    def run(self, model: ModelArtifact | None, ctx: StageContext) -> ModelArtifact:
        assert model is not None  # guaranteed by `accepts`
        params: ExportParams = self.config
        folder = ctx.run_dir / "export"
        folder.mkdir(parents=True, exist_ok=True)
        written: dict[str, Path] = {}
        for target in dict.fromkeys(params.formats):
            source = model.nearest(SOURCE_FORMAT[target])
            if source is None:
                raise PipelineError(
                    f"stages.{ctx.name}.formats: no {SOURCE_FORMAT[target].value} model to export as '{target}'; "
                    f"remove '{target}' or add a stage that produces one"
                )
            written[target] = write(source, target, folder / params.name)
            ctx.log.info("    wrote %s", written[target])
            if trained_past(model, source):
                ctx.log.warning(
                    "    %s is the model of stage '%s', from before quantization-aware training; "
                    "the .tflite holds the quantization-aware result",
                    written[target].name, source.stage,
                )
        exports = list(written.values())
        if params.metadata:
            from stages import _metadata

            exports.append(_metadata.write(model, written, ctx, folder / f"{params.name}.json"))
            ctx.log.info("    wrote %s", exports[-1])
        handed_on = written.get(model.format.value, model.path)
        return ModelArtifact(
            handed_on, model.format, ctx.name, model, dict(model.metadata), self.output_effects(model), exports=tuple(exports)
        )


def trained_past(model: ModelArtifact, source: ModelArtifact) -> bool:
    """Whether quantization-aware training happened between `source` and `model`."""
    return Effect.QUANTIZE_AWARE in model.effects - source.effects


def write(source: ModelArtifact, target: str, stem: Path) -> Path:
    """Write `source` as `target` next to `stem`; returns the written path."""
    if target == "tflite":
        return Path(shutil.copyfile(source.path, stem.with_suffix(".tflite")))
    if target == "keras" and source.path.suffix == ".keras":
        return Path(shutil.copyfile(source.path, stem.with_suffix(".keras")))
    keras_model = source.load_keras()
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
