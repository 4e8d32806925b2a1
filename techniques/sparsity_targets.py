"""Per-layer sparsity targets: one number for every layer, a mapping by layer name or type, or a plan.

`final_sparsity: 0.8` prunes every chosen layer to 80%; `{default: 0.8, Conv2D: 0.5, dense_1: 0.9}`
sets a layer's target by its name first, else by its type, else `default` (layers matching
nothing and no default stay dense); `plan` takes the per-layer plan an earlier `sensitivity`
stage made. The form is checked when the recipe is validated, names against the model when the
stage runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pipeline.errors import PipelineError, quoted
from pipeline.run.layer_plan import Action
from techniques.layers import check_patterns

DEFAULT = "default"
PLAN = "plan"
SparsityTarget = float | dict[str, float] | Literal["plan"]
"""The type of `final_sparsity`."""

EXAMPLE = "give e.g. 0.8, {default: 0.8, Conv2D: 0.5} or plan"
ZERO = "target 0%"
"""Why a layer prune could act on stays dense: its target (from a mapping or the plan) is 0."""


def check_target(value: Any) -> Any:
    """Validate the form of a target before TensorFlow is imported (a pydantic before-validator)."""
    if value == PLAN:
        return value
    if isinstance(value, Mapping):
        if not value:
            raise ValueError(f"an empty mapping prunes nothing; {EXAMPLE}")
        for key, share in value.items():
            if not isinstance(key, str) or not key:
                raise ValueError(f"mapping keys are layer names or types, or 'default', not {quoted(key)}")
            check_share(share, f"{quoted(key)}: ")
        return dict(value)
    check_share(value, "")
    return value


def check_share(value: Any, prefix: str) -> None:
    """A sparsity is a number from 0 up to (not including) 1; messages as pydantic words them."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{prefix}expected a valid number")  # noqa: TRY004 - pydantic reports ValueError only
    if value < 0:
        raise ValueError(f"{prefix}expected greater than or equal to 0")
    if value >= 1:
        raise ValueError(f"{prefix}expected less than 1")


def highest(target: SparsityTarget) -> float:
    """The largest sparsity a target names (a plan's is known only when the stage runs: 0)."""
    if isinstance(target, dict):
        return max(target.values())
    return 0.0 if target == PLAN else float(target)


def lowest(target: SparsityTarget) -> float:
    """The smallest sparsity a target names (a plan's is known only when the stage runs: 1)."""
    if isinstance(target, dict):
        return min(target.values())
    return 1.0 if target == PLAN else float(target)


def resolve(model: Any, target: SparsityTarget, plan: Mapping[str, float] | None, where: str) -> dict[str, float]:
    """Layer name -> its target sparsity, for each layer of `model` (0: leave it dense)."""
    layers = model.layers
    if target == PLAN:
        if plan is None:
            raise PipelineError(
                f"{where}.final_sparsity: 'plan' needs the plan of a sensitivity stage before this one; add one or give numbers"
            )
        return {layer.name: float(plan.get(layer.name, 0.0)) for layer in layers}
    if not isinstance(target, dict):
        return {layer.name: float(target) for layer in layers}
    check_patterns(model, (key for key in target if key != DEFAULT), f"{where}.final_sparsity")
    default = float(target.get(DEFAULT, 0.0))
    return {layer.name: float(target.get(layer.name, target.get(type(layer).__name__, default))) for layer in layers}


def overall(sizes: Mapping[str, int], targets: Mapping[str, float]) -> float:
    """The share of zeros the targets make among the weights of the layers in `sizes`."""
    total = sum(sizes.values())
    return sum(sizes[name] * targets.get(name, 0.0) for name in sizes) / total if total else 0.0


def in_words(target: SparsityTarget) -> str:
    """The sparsity asked for, in words (prune's plan line)."""
    if target == PLAN:
        return "to the sensitivity plan's per-layer sparsity"
    if isinstance(target, dict):
        return f"to per-layer sparsity ({', '.join(f'{key} {share:.0%}' for key, share in target.items())})"
    return f"to {target:.0%} sparsity"


def with_targets(
    actions: Mapping[str, Action], targets: Mapping[str, float] | None, per_layer: bool, where: str
) -> dict[str, Action]:
    """Prune's `actions` with the targets applied: a layer whose target is 0 stays dense; with `per_layer`
    targets each pruned layer names its own (`targets` None: a plan not made yet, before the run).

    PipelineError when no layer is left to prune.
    """
    def planned(name: str, action: Action) -> Action:
        if action.kind != "pruned":
            return action
        if targets is None:
            return Action("pruned", "by the plan")
        if not targets[name]:
            return Action("dense", ZERO)
        return Action("pruned", f"{targets[name]:.0%}") if per_layer else action

    planned_actions = {name: planned(name, action) for name, action in actions.items()}
    if not any(action.kind == "pruned" for action in planned_actions.values()):
        raise PipelineError(
            f"{where}.final_sparsity: every chosen layer's target is 0, so nothing is pruned; give some layers a sparsity above 0"
        )
    return planned_actions
