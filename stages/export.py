"""export: write the shipped files (TFLite, Keras, H5, SavedModel) to the run's export folder."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field

from pipeline.artifact import Effect, ModelArtifact, ModelFormat
from pipeline.errors import PipelineError
from pipeline.schema import Params
from pipeline.stage import Stage, StageContext
from stages._serving import INPUTS_HELP, OUTPUTS_HELP, choose_inputs, contract, serving_model

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
        True,
        description=(
            "Also write NAME.json (input contract and preprocessing, class names, recipe, metrics, I/O details, "
            "quantization, lineage) and NAME.labels.txt (one class name per line)."
        ),
    )
    inputs: Literal["auto", "raw", "preprocessed"] = Field(
        "auto", description=f"Keras-format exports (auto: as the converted TFLite model, else raw). {INPUTS_HELP}"
    )
    outputs: Literal["auto", "logits", "probabilities"] = Field(
        "auto", description=f"Keras-format exports (auto: as the converted TFLite model, else logits). {OUTPUTS_HELP}"
    )


class ExportStage(Stage):
    """Copy or convert the latest model of each requested format into `<run>/export/`.

    The incoming model is handed on as its exported copy; a Keras export after quantization
    writes the Keras model the TFLite file was converted from. Keras-format files get the named
    serving signature and, for raw inputs, the data's preprocessing folded in as layers.
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
        keras_contract = keras_serving(params, model, ctx)
        contracts = {}
        for target in dict.fromkeys(params.formats):
            source = model.nearest(SOURCE_FORMAT[target])
            if source is None:
                raise PipelineError(
                    f"stages.{ctx.name}.formats: no {SOURCE_FORMAT[target].value} model to export as '{target}'; "
                    f"remove '{target}' or add a stage that produces one"
                )
            contracts[target] = source.metadata.get("serving", {}) if target == "tflite" else keras_contract
            written[target] = write(source, target, folder / params.name, keras_contract, ctx)
            ctx.log.info("    wrote %s", written[target])
            if trained_past(model, source):
                ctx.log.warning(
                    "    %s is the model of stage '%s', from before quantization-aware training; "
                    "the .tflite holds the quantization-aware result",
                    written[target].name, source.stage,
                )
        exports = list(written.values())
        facts = dict(model.metadata)
        if model.format.value in written:  # handed on as its exported copy, under that file's contract
            facts["serving"] = contracts[model.format.value]
        handed_on = ModelArtifact(
            written.get(model.format.value, model.path), model.format, ctx.name, model, facts, self.output_effects(model)
        )
        if params.metadata:
            from stages import _metadata

            for path in _metadata.write(handed_on, written, contracts, ctx, folder / params.name):
                exports.append(path)
                ctx.log.info("    wrote %s", path)
        return dataclasses.replace(handed_on, exports=tuple(exports))


def trained_past(model: ModelArtifact, source: ModelArtifact) -> bool:
    """Whether quantization-aware training happened between `source` and `model`."""
    return Effect.QUANTIZE_AWARE in model.effects - source.effects


def keras_serving(params: ExportParams, model: ModelArtifact, ctx: StageContext) -> dict[str, str]:
    """The contract of Keras-format exports: as asked, or (auto) as the converted TFLite model's."""
    converted = model.nearest(ModelFormat.TFLITE)
    before = converted.metadata.get("serving", {}) if converted is not None else {}
    choice = before.get("inputs", "raw") if params.inputs == "auto" else params.inputs
    inputs, _ = choose_inputs(choice, ctx.data.preprocessing, integer=False)
    outputs = before.get("outputs", "logits") if params.outputs == "auto" else params.outputs
    return contract(inputs, outputs)


def write(source: ModelArtifact, target: str, stem: Path, serving: dict[str, str], ctx: StageContext) -> Path:
    """Write `source` as `target` next to `stem` (Keras formats under the `serving` contract); the written path."""
    if target == "tflite":
        return Path(shutil.copyfile(source.path, stem.with_suffix(".tflite")))
    keras_model = serving_model(source.load_keras(), ctx.data.preprocessing, serving["inputs"], serving["outputs"])
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
