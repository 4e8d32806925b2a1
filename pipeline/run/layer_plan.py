"""The layer plan: what each stage of a recipe will do to each layer of the model, before any training.

The runner builds the model once, asks every stage what it will do to each layer (`Stage.layer_plan`)
and prints the answers as one table, stores them in the run folder (`layer_plan.md`, `layer_plan.json`)
and in MLflow. It knows no technique: a stage's answer is a set of `Action`s by layer name, in the
stage's own words (pruned, dense, quantization-aware, ...), each with the reason when a layer is left
alone. A stage that replaces the model (a distillation student) hands the model later stages plan on.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pipeline.errors import PipelineError
from pipeline.plugin.artifact import Effect
from pipeline.run.summary import markdown


@dataclass(frozen=True)
class Action:
    """What one stage does to one layer: a short word (`kind`) and, when it leaves the layer alone, why."""

    kind: str
    why: str = ""

    def __str__(self) -> str:
        return f"{self.kind} ({self.why})" if self.why else self.kind


@dataclass(frozen=True)
class StagePlan:
    """One stage's declared effect on a model.

    `actions` holds the layers the stage acts on or deliberately leaves alone (others: untouched);
    `summary` is one line for the log; `model` is set by a stage that replaces the model, which
    later stages then plan on.
    """

    actions: dict[str, Action] = field(default_factory=dict)
    summary: str = ""
    model: Any = None


class NeedsLayerGraph(PipelineError):
    """Raised by a stage's `layer_plan` when it works layer by layer and the model has no layer graph."""


@dataclass(frozen=True)
class LayerRow:
    """One layer of a planned model."""

    name: str
    type: str
    params: int


@dataclass
class Section:
    """One model and what the stages that act on it will do to its layers."""

    title: str
    layers: list[LayerRow]
    stages: dict[str, StagePlan] = field(default_factory=dict)


@dataclass
class LayerPlan:
    """Every stage's plan, per layer, in recipe order.

    `effects` is what the model will have been through so far (the stages' `effects_after`),
    so a stage can plan as it will run (a QAT scheme that keeps the pruned zeros).
    """

    sections: list[Section]
    effects: frozenset[Effect] = frozenset()

    def table(self) -> str:
        """The plan as Markdown tables, one per model, then each stage's summary line."""
        blocks = []
        for section in self.sections:
            if not section.layers:
                blocks.append(section.title)
                continue
            acting = [name for name, stage in section.stages.items() if stage.actions]
            header = ["layer", "type", "params", *acting]
            rows = [
                [row.name, row.type, f"{row.params:,}", *(str(section.stages[s].actions.get(row.name, "")) for s in acting)]
                for row in section.layers
            ]
            total = sum(row.params for row in section.layers)
            lines = [f"{section.title}: {len(section.layers)} layers, {total:,} parameters", markdown(header, rows, right_aligned={2})]
            lines += [f"- {name}: {stage.summary}" for name, stage in section.stages.items() if stage.summary]
            blocks.append("\n".join(lines))
        return "\n\n".join(blocks)

    def to_json(self) -> dict[str, Any]:
        """The plan as plain data: per model, its layers and each stage's action on each."""
        return {
            "models": [
                {
                    "title": section.title,
                    "layers": [
                        {
                            "name": row.name, "type": row.type, "params": row.params,
                            "stages": {
                                name: {"action": stage.actions[row.name].kind, "why": stage.actions[row.name].why}
                                for name, stage in section.stages.items() if row.name in stage.actions
                            },
                        }
                        for row in section.layers
                    ],
                    "summaries": {name: stage.summary for name, stage in section.stages.items() if stage.summary},
                }
                for section in self.sections
            ]
        }

    def dumps(self) -> str:
        """`to_json` as indented text."""
        return json.dumps(self.to_json(), indent=2) + "\n"


def layer_rows(model: Any) -> list[LayerRow]:
    """Name, type and parameter count of each layer (a subclassed model's tracked sublayers)."""
    import tf_keras as keras

    return [
        LayerRow(layer.name, type(layer).__name__, int(layer.count_params()) if layer.built else 0)
        for layer in model.layers
        if not isinstance(layer, keras.layers.InputLayer)
    ]


def plan_layers(model: Any, stages: Sequence[Any], origin: str) -> LayerPlan:
    """Ask each planned stage (`.name`, `.stage`) what it will do to `model`'s layers.

    Stages that need a layer graph the model lacks (a subclassed model) are collected into one
    PipelineError naming `origin` (the model's config key), so the run stops before any training.
    An inference-only SavedModel (a signature, no layers) gets a plan that says so: its stages
    convert or run it whole.
    """
    if not hasattr(model, "layers"):
        return LayerPlan([Section(f"model ({origin}): an inference-only SavedModel, no Keras layers; its stages take it whole", [])])
    plan = LayerPlan([Section(f"model ({origin})", layer_rows(model))])
    needing: list[str] = []
    for planned in stages:
        where = f"stages.{planned.name}"
        try:
            stage_plan = planned.stage.layer_plan(model, plan, where)
        except NeedsLayerGraph:
            needing.append(where)
            continue
        plan.effects = planned.stage.effects_after(plan.effects)
        if stage_plan is None:
            continue
        plan.sections[-1].stages[planned.name] = stage_plan
        if stage_plan.model is not None:
            model = stage_plan.model
            plan.sections.append(Section(f"model made by {where}", layer_rows(model)))
    if needing:
        others = [f"stages.{p.name}" for p in stages if f"stages.{p.name}" not in needing]
        raise PipelineError(
            f"{origin}: a subclassed model has no layer graph, and {', '.join(needing)} "
            f"{'work' if len(needing) > 1 else 'works'} layer by layer; build it with keras.Model(inputs, outputs) "
            f"or keras.Sequential (blocks and sub-models are fine), or remove {', '.join(needing)}"
            + (f" ({', '.join(others)} take it as it is)" if others else "")
        )
    return plan
