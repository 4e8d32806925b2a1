"""DistilBERT-style students (Sanh et al., 2019): a shallower copy of an encoder that starts from the teacher.

The student has the teacher's width and fewer blocks. Before training it takes the teacher's
weights: the embeddings, the classifier, and for its block j the teacher's block `blocks[j]`
(DistilBERT keeps every other layer: 0, 2, 4, ...). Blocks are found by name (`block{i}_...`, as
pipeline.models.text names them), so any teacher built that way works, a teacher file included.
"""

from __future__ import annotations

import re
from typing import Any

from pipeline.errors import PipelineError

BLOCK = re.compile(r"^block(\d+)_(.+)$")


def block_count(model: Any) -> int:
    """Number of encoder blocks (`block{i}_...` layers) of `model`."""
    found = {int(match.group(1)) for layer in getattr(model, "layers", []) if (match := BLOCK.match(layer.name))}
    return max(found) + 1 if found else 0


def every_other(student_blocks: int) -> list[int]:
    """DistilBERT's choice: the student's block j starts from the teacher's block 2j."""
    return [2 * j for j in range(student_blocks)]


def chosen_blocks(teacher: Any, student: Any, blocks: list[int] | None, where: str) -> list[int]:
    """The teacher block each student block starts from; PipelineError when the models or the choice do not fit."""
    have, need = block_count(teacher), block_count(student)
    if not have or not need:
        raise PipelineError(
            f"{where}.init: initialising from the teacher needs encoder blocks named block0_..., block1_... in both "
            f"models (the teacher has {have}, the student {need}); use model=transformer for both, or set {where}.init=none"
        )
    chosen = list(blocks) if blocks is not None else every_other(need)
    if len(chosen) != need or any(not 0 <= index < have for index in chosen):
        default = "" if blocks is not None else " (every other one)"
        raise PipelineError(
            f"{where}.teacher_blocks: {chosen}{default} must name {need} of the teacher's blocks 0-{have - 1}, one per "
            f"student block; list them in {where}.teacher_blocks or give the student fewer blocks"
        )
    return chosen


def initialise_from_teacher(student: Any, teacher: Any, blocks: list[int] | None, where: str) -> list[int]:
    """Copy the teacher's embeddings, classifier and chosen blocks into `student`; the chosen blocks.

    `where` is the distill stage's config key. Layers are matched by name; a student layer whose
    weights differ in shape from its teacher layer's (another width) is a PipelineError.
    """
    chosen = chosen_blocks(teacher, student, blocks, where)
    teacher_layers = {layer.name: layer for layer in teacher.layers}
    for layer in student.layers:
        if not layer.weights:
            continue
        match = BLOCK.match(layer.name)
        source_name = f"block{chosen[int(match.group(1))]}_{match.group(2)}" if match else layer.name
        source = teacher_layers.get(source_name)
        if source is None:
            raise PipelineError(
                f"{where}.init: the teacher has no layer {source_name} for the student's {layer.name}; "
                f"give the student the teacher's architecture with fewer blocks, or set {where}.init=none"
            )
        shapes = [tuple(w.shape) for w in layer.get_weights()], [tuple(w.shape) for w in source.get_weights()]
        if shapes[0] != shapes[1]:
            raise PipelineError(
                f"{where}.init: the student's {layer.name} has weights {shapes[0]} but the teacher's {source_name} "
                f"has {shapes[1]}; give the student the teacher's dim, heads and ff (only blocks fewer), or set {where}.init=none"
            )
        layer.set_weights(source.get_weights())
    return chosen
