"""distill: train a smaller student on a teacher's softened outputs (Hinton et al., 2015) and the labels.

DistilBERT-style (Sanh et al., 2019) with `init=teacher` (the student starts from the teacher's
embeddings and every other block) and `hidden_weight` (a cosine loss aligning pooled hidden states);
TinyBERT-style (Jiao et al., 2020) with `intermediate_weight` and `attention_weight` (per-block hidden
states and attention maps, techniques.intermediate).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from pipeline.errors import PipelineError, quoted
from pipeline.models import build, check_compatible, on_data_loaded, starting_format
from pipeline.models.compat import prepared
from pipeline.models.user import model_file_problem
from pipeline.plugin.artifact import Effect, ModelArtifact, ModelFormat
from pipeline.plugin.stage import Stage, StageContext
from pipeline.run.layer_plan import LayerPlan, StagePlan
from techniques.distillation import (
    accuracy_on_logits,
    before_channel_pruning,
    distillation_loss,
    hidden_width,
    label_width,
    load_teacher,
    predict,
    teacher_targets,
    with_hidden_state,
)
from techniques.intermediate import check_models, uniform_mapping, with_intermediate_losses
from techniques.student_init import block_count, initialise_from_teacher
from techniques.training import FitParams, compile_model, fit, save_keras


class DistillParams(FitParams):
    """Parameters of the distill stage."""

    teacher: str | None = Field(
        None, min_length=1,
        description=(
            "Teacher model file (.keras or .h5, tf-keras or Keras 3, or any SavedModel); unset: the preceding "
            "stage's model, or with student=incoming the model before channel pruning."
        ),
    )
    student: dict[str, Any] | Literal["incoming"] = Field(
        default_factory=lambda: {"name": "small_cnn", "width": 0.5},
        description=(
            "Student model config, as in the model group: {name: small_cnn, width: 0.5}; or incoming: the preceding "
            "stage's model (e.g. channel-pruned) is the student and keeps its weights."
        ),
    )
    loss: Literal["kl", "mse"] = Field(
        "kl", description="kl: T^2-scaled KL divergence of softened outputs; mse: squared error between logits."
    )
    temperature: float = Field(4.0, gt=0, le=100, description="Softens both softmaxes of the kl loss.")
    alpha: float = Field(0.7, ge=0, le=1, description="Weight of the teacher term; 1 - alpha weighs the label loss.")
    epochs: int = Field(20, ge=1, le=10_000, description="Passes over the training split.")
    init: Literal["none", "teacher"] = Field(
        "none",
        description=(
            "teacher: the new student starts from the teacher's embeddings, classifier and the blocks in teacher_blocks "
            "(DistilBERT); the student needs the teacher's width with fewer blocks (model=transformer); none: fresh weights."
        ),
    )
    teacher_blocks: list[int] | None = Field(
        None, description="With init=teacher: the teacher block each student block starts from (null: every other one: 0, 2, 4, ...)."
    )
    hidden_weight: float = Field(
        0.0, ge=0, le=100,
        description=(
            "Weight of a cosine loss aligning the student's pooled hidden state (its classifier's input) with the "
            "teacher's, as DistilBERT's; 0: off. Both states need the same width."
        ),
    )
    intermediate_weight: float = Field(
        0.0, ge=0, le=100,
        description=(
            "TinyBERT-style: weight of the mean squared error between each student block's output and its teacher block's "
            "(teacher_blocks, else TinyBERT's uniform mapping: the last blocks meet), and between the embeddings' outputs; "
            "a learned projection maps a narrower student to the teacher's width. 0: off."
        ),
    )
    attention_weight: float = Field(
        0.0, ge=0, le=100,
        description="TinyBERT-style: weight of the mean squared error between matched blocks' attention maps (equal heads needed); 0: off.",
    )


class DistillStage(Stage[DistillParams]):
    """Knowledge distillation from the incoming model (or a teacher file) into a fresh student.

    The teacher only predicts, so it may be an inference-only SavedModel; the student is built
    from `student` and trained here, so that config must describe a Keras model.
    """

    accepts: ClassVar = frozenset({None, ModelFormat.KERAS, ModelFormat.SAVED_MODEL})

    def effects_after(self, incoming: frozenset[Effect]) -> frozenset[Effect]:
        """A new student has been through nothing; an incoming one stays narrow but loses its zeros and
        clusters. Either has a teacher that later fine-tuning may keep learning from."""
        kept = incoming & {Effect.CHANNEL_PRUNED} if self.config.student == "incoming" else frozenset()
        return kept | {Effect.DISTILLED}

    def inherited_metadata(self, parent: ModelArtifact) -> Mapping[str, Any]:
        """An incoming student carries its earlier stages' facts on (which channels stayed); a new
        student is a new model and starts anew, though its teacher stays its parent."""
        return parent.metadata if self.config.student == "incoming" else {}

    def check_input(self, input_format: ModelFormat | None, effects: frozenset[Effect], where: str) -> None:
        params = self.config
        if params.teacher is None and input_format is None:
            raise PipelineError(
                f"{where}.teacher: no teacher: no stage before {where} makes a model and no teacher file is set; "
                f"put a train stage first or set {where}.teacher=PATH"
            )
        if params.teacher is not None and not Path(params.teacher).exists():
            raise PipelineError(f"{where}.teacher: no such file {quoted(params.teacher)}; give the path of a .keras, .h5 or SavedModel")
        problem = model_file_problem(Path(params.teacher)) if params.teacher is not None else None
        if problem:
            raise PipelineError(f"{where}.teacher: {params.teacher} {problem}")
        if params.student == "incoming":
            check_incoming_student(params, input_format, effects, where)
            if params.init == "teacher":
                raise PipelineError(f"{where}.init: 'teacher' initialises a new student; with student=incoming set {where}.init=none")
            return
        student = self.student_builder(where)
        if starting_format(student) is ModelFormat.SAVED_MODEL:
            raise PipelineError(
                f"{where}.student: {student.config.path} is an inference-only SavedModel (a serving signature, no "
                "Keras model) and cannot be trained as the student; give a Keras model file or an architecture"
            )

    def check_data(self, data: Any, where: str) -> None:
        """A new student must take the data's examples and classes, as the recipe's model must."""
        if self.config.student == "incoming":
            return  # the incoming model was checked as the recipe's model or made by a stage for this data
        builder = self.student_builder(where)
        on_data_loaded(builder, data)
        check_compatible(builder, data, f"{where}.student")

    def layer_plan(self, model: Any, earlier: LayerPlan, where: str) -> StagePlan:
        """A new student replaces the model: later stages act on its layers. An incoming student is the model."""
        if self.config.student == "incoming":
            return StagePlan(summary="trains the incoming model as the student on the teacher's outputs")
        builder = self.student_builder(where)
        student = prepared(builder.build(tuple(model.input_shape[1:]), model.output_shape[-1]), f"{where}.student")
        how = " (starting from the teacher's embeddings and blocks)" if self.config.init == "teacher" else ""
        aligned = " and its pooled hidden state" if self.config.hidden_weight else ""
        if self.config.intermediate_weight or self.config.attention_weight:
            aligned += " and its blocks' hidden states" + (" and attention maps" if self.config.attention_weight else "")
        summary = f"trains a new {self.config.student['name']} student{how} on the teacher's outputs{aligned}"
        return StagePlan(summary=summary, model=student)

    def student_builder(self, where: str) -> Any:
        """The configured model plugin of the student, one per stage: what the data told it (a text
        model's vocabulary size, in `check_data`) holds when the layer plan builds it."""
        from pipeline.config.recipe import configure
        from pipeline.plugin import registry

        assert not isinstance(self.config.student, str)  # "incoming" is the only string it takes
        if getattr(self, "_student", None) is None:
            self._student = configure(registry.MODELS, self.config.student, f"{where}.student")
        return self._student

    def run(self, model: ModelArtifact | None, ctx: StageContext) -> ModelArtifact:
        params = self.config
        incoming = params.student == "incoming"
        if params.teacher is not None:
            teacher_file, teacher = params.teacher, load_teacher(params.teacher, ctx.data, f"stages.{ctx.name}.teacher", ctx.log)
        else:
            assert model is not None  # guaranteed by check_input
            source = before_channel_pruning(model, f"stages.{ctx.name}") if incoming else model
            teacher_file, teacher = str(source.path), source.load_model()
        if incoming:
            assert model is not None  # guaranteed by check_input
            student = model.load_keras()
        else:
            builder = self.student_builder(f"stages.{ctx.name}")
            on_data_loaded(builder, ctx.data)
            student = ctx.device.place_model(build(builder, ctx.data, f"stages.{ctx.name}.student"))
        data, where = ctx.data, f"stages.{ctx.name}"
        facts: dict[str, Any] = {}
        if params.init == "teacher":
            facts["initialised_from_blocks"] = initialise_from_teacher(student, teacher, params.teacher_blocks, where)
            ctx.log.info("    student starts from the teacher's embeddings, classifier and blocks %s", facts["initialised_from_blocks"])
        classes = aligned_classes(params, student, teacher, data.num_classes, where)
        trained = with_hidden_state(student) if classes else student  # shares the student's layers
        if params.intermediate_weight or params.attention_weight:
            mapping = params.teacher_blocks or uniform_mapping(block_count(student), block_count(teacher))
            check_models(student, teacher, mapping, bool(params.attention_weight), where)
            trained = with_intermediate_losses(trained, student, teacher, mapping, params.intermediate_weight, params.attention_weight)
            facts["intermediate_blocks"] = mapping
            ctx.log.info("    student blocks learn the hidden states%s of teacher blocks %s",
                         " and attention maps" if params.attention_weight else "", mapping)
        targets = teacher_targets(teacher, data, hidden=bool(classes))
        from pipeline.measure.metrics import primary_score
        from pipeline.measure.tasks import task_named

        task, labels = task_named(data.task), label_width(data)
        teacher_accuracy = primary_score(predict(teacher, data.x_test), data.y_test, data)
        ctx.log.info(
            "    teacher: %d parameters, test %s %.4f; student: %d parameters",
            teacher.count_params(), task.title, teacher_accuracy, student.count_params(),
        )
        loss = distillation_loss(params.loss, params.alpha, params.temperature, classes, params.hidden_weight, data.task, labels)
        compile_model(trained, params, loss=loss, metrics=[accuracy_on_logits(classes, data.task, labels)])
        fit(trained, params, data, ctx.device, seed=ctx.seed + ctx.index, log=ctx.log, name=ctx.name, targets=targets)
        teacher_facts = {"teacher_params": float(teacher.count_params()), teacher_metric(task.name, task.primary): teacher_accuracy}
        # An incoming student carries its earlier stages' facts (which channels stayed) on; a new one starts anew.
        artifact = save_keras(
            student, model if incoming else None, ctx.workdir, ctx.name, ctx.log, effects=self.output_effects(model), metrics=teacher_facts,
            distilled=True, teacher=teacher_file, teacher_file=params.teacher, student_incoming=incoming,
            temperature=params.temperature, **facts,
        )
        return dataclasses.replace(artifact, parent=model)


def teacher_metric(task: str, primary: str) -> str:
    """The name of the teacher's test score among the stage's metrics: teacher_accuracy, teacher_test_mae, ..."""
    return "teacher_accuracy" if task == "classification" else f"teacher_test_{primary}"


def aligned_classes(params: DistillParams, student: Any, teacher: Any, classes: int, where: str) -> int | None:
    """With hidden-state alignment, the class count that splits logits from hidden states; None without it."""
    if not params.hidden_weight:
        return None
    widths = hidden_width(student, f"{where}.hidden_weight"), hidden_width(teacher, f"{where}.hidden_weight")
    if widths[0] != widths[1]:
        raise PipelineError(
            f"{where}.hidden_weight: the student's pooled hidden state has {widths[0]} values and the teacher's {widths[1]}; "
            f"the cosine loss needs equal widths (DistilBERT keeps the teacher's width): give the student the teacher's width "
            f"or set {where}.hidden_weight=0"
        )
    return classes


def check_incoming_student(params: DistillParams, input_format: ModelFormat | None, effects: frozenset[Effect], where: str) -> None:
    """student=incoming trains the incoming Keras model; without a teacher file, channel pruning must come first."""
    if input_format is not ModelFormat.KERAS:
        got = "no model" if input_format is None else f"a {input_format.value} model"
        raise PipelineError(f"{where}.student: 'incoming' trains the incoming Keras model, but {where} gets {got}; "
                            "put a stage that makes a Keras model first")
    if params.teacher is None and Effect.CHANNEL_PRUNED not in effects:
        raise PipelineError(
            f"{where}.teacher: with student=incoming the teacher is the model before channel pruning, but no stage "
            f"before {where} prunes channels; set {where}.teacher=PATH or put a channel_prune stage first"
        )

