"""export: write the shipped files (TFLite, Keras, H5, SavedModel, Keras 3) to the run's export folder."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field

from pipeline.errors import PipelineError
from pipeline.measure.tasks import served_outputs
from pipeline.plugin.artifact import Effect, ModelArtifact, ModelFormat
from pipeline.plugin.schema import Params
from pipeline.plugin.stage import Stage, StageContext
from techniques.export_files import write_metadata, write_model
from techniques.serving import INPUTS_HELP, OUTPUTS_HELP, choose_inputs, contract

Target = Literal["tflite", "keras", "h5", "saved_model", "keras3"]

# Which artifact in the lineage each export target is written from, in order of preference: a
# SavedModel is written from the Keras model, or copied when the recipe started from one.
SOURCE_FORMAT = {
    "tflite": (ModelFormat.TFLITE,),
    "keras": (ModelFormat.KERAS,),
    "h5": (ModelFormat.KERAS,),
    "saved_model": (ModelFormat.KERAS, ModelFormat.SAVED_MODEL),
    "keras3": (ModelFormat.KERAS,),
}


DEFAULT_FORMATS: list[Target] = ["tflite", "keras"]


class ExportParams(Params):
    """Parameters of the export stage."""

    formats: list[Target] = Field(
        default_factory=lambda: list(DEFAULT_FORMATS), min_length=1,
        description="Files to write: tflite, keras (.keras), h5, saved_model, keras3 (NAME_keras3.keras, for Keras 3).",
    )
    name: str = Field("model", pattern=r"^[\w.-]+$", description="Base name of the exported files.")
    metadata: bool = Field(
        True,
        description=(
            "Also write NAME.json (input contract and preprocessing, class names, recipe, metrics, I/O details, "
            "quantization, lineage, the tokenizer's rules for text), NAME.labels.txt (one class name per line) and, "
            "for text, NAME.vocab.txt (the tokenizer's vocabulary, line n being token id n)."
        ),
    )
    inputs: Literal["auto", "raw", "preprocessed"] = Field(
        "auto", description=f"Keras-format exports (auto: as the converted TFLite model, else raw). {INPUTS_HELP}"
    )
    outputs: Literal["auto", "logits", "probabilities"] = Field(
        "auto", description=f"Keras-format exports (auto: as the converted TFLite model, else logits). {OUTPUTS_HELP}"
    )


class ExportStage(Stage[ExportParams]):
    """Copy or convert the latest model of each requested format into `<run>/export/`.

    The incoming model is handed on as its exported copy; a Keras export after quantization
    writes the Keras model the TFLite file was converted from. Keras-format files get the named
    serving signature and, for raw inputs, the data's preprocessing folded in as layers.
    """

    accepts: ClassVar = frozenset(ModelFormat)
    cacheable: ClassVar = False  # cheap, and its files belong to this run's export/ folder
    output_in_workdir: ClassVar = False  # hands on its copy in export/, or its input as it was

    @classmethod
    def output_format(cls, input_format: ModelFormat | None) -> ModelFormat:
        return input_format  # type: ignore[return-value]

    def check_input(self, input_format: ModelFormat | None, effects: frozenset[Effect], where: str) -> None:
        """A TFLite export needs a TFLite model: no stage turns one back into Keras, so the
        incoming format tells whether the lineage holds one."""
        if "tflite" in self.config.formats and input_format is not ModelFormat.TFLITE:
            raise PipelineError(
                f"{where}.formats: 'tflite' needs a TFLite model but no stage before {where} converts to TFLite; "
                f"add a quantize or qat stage before it or remove 'tflite' from {where}.formats"
            )

    def run(self, model: ModelArtifact | None, ctx: StageContext) -> ModelArtifact:
        assert model is not None  # guaranteed by `accepts`
        params = self.config
        folder = ctx.run_dir / "export"
        folder.mkdir(parents=True, exist_ok=True)
        written: dict[str, Path] = {}
        keras_contract = keras_serving(params, model, ctx)
        contracts: dict[str, dict[str, str]] = {}
        for target in dict.fromkeys(params.formats):
            source = next(filter(None, (model.nearest(fmt) for fmt in SOURCE_FORMAT[target])), None)
            if source is None:
                raise PipelineError(
                    f"stages.{ctx.name}.formats: no {SOURCE_FORMAT[target][0].value} model to export as '{target}'; "
                    f"remove '{target}' or add a stage that produces one"
                )
            contracts[target] = contract_of(source, target, keras_contract)
            written[target] = write_model(
                source, target, folder / params.name, keras_contract, ctx.data, ctx.workdir, f"stages.{ctx.name}.formats", ctx.log
            )
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
            metrics = shipped_metrics(handed_on, ctx)
            for path in write_metadata(handed_on, written, contracts, folder / params.name, ctx.data, metrics, ctx.config, ctx.budget):
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
    return contract(inputs, served_outputs(outputs, ctx.data.task))


def contract_of(source: ModelArtifact, target: str, keras_contract: dict[str, str]) -> dict[str, str]:
    """What the file written for `target` takes and gives."""
    if target == "tflite":
        return source.metadata.get("serving", {})
    if source.format is ModelFormat.SAVED_MODEL:  # the user's own SavedModel, copied as it is
        return contract("preprocessed", "logits")
    return keras_contract



def shipped_metrics(shipped: ModelArtifact, ctx: StageContext) -> Mapping[str, float]:
    """The test-split measurements of what ships, for NAME.json.

    `shipped` is the export stage's output; a copy of the incoming model (its parent) under the
    same contract was measured by the runner already.
    """
    from pipeline.config.settings import MeasureParams
    from pipeline.measure.metrics import measure

    model = shipped.parent or shipped
    same = model.metadata.get("serving") == shipped.metadata.get("serving")
    measured = ctx.measurements.get(model.stage) if same else None
    return measured or measure(shipped, ctx.data, MeasureParams(latency_runs=10, warmup_runs=2))
