"""Choosing which layers a compression stage wraps, by layer name or layer type, and saying why not.

Prune and cluster act on layers with a kernel (a weight of rank 2 or more: the weights the runner's
sparsity counts). `choose_layers` decides for each such layer, in the stage's words, whether the
stage acts on it or leaves it alone and why; the same answer makes the layer plan before training
and the wrapping during the stage, so the plan shows what the stage does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol

from pydantic import Field

from pipeline.errors import PipelineError, quoted
from pipeline.plugin.schema import Params
from pipeline.run.layer_plan import Action, NeedsLayerGraph


class LayerChoice(Params):
    """Which layers a stage acts on; mixed into prune and cluster parameters."""

    layers: list[str] = Field(
        default_factory=list,
        description="Layer names or types (e.g. Dense, Conv2D) to act on; empty: every supported layer.",
    )
    skip_layers: list[str] = Field(
        default_factory=list, description="Layer names or types left untouched, even when listed in `layers`."
    )


class Chosen(Protocol):
    """Anything that names layers to act on and layers to skip, as LayerChoice does."""

    @property
    def layers(self) -> list[str]: ...

    @property
    def skip_layers(self) -> list[str]: ...


def matches(layer: Any, patterns: list[str]) -> bool:
    """Whether `layer`'s name or class name is among `patterns`."""
    return layer.name in patterns or type(layer).__name__ in patterns


def check_names(model: Any, choice: Chosen, where: str) -> None:
    """Fail on a name or type that matches no layer: a typo would otherwise select nothing."""
    for key in ("layers", "skip_layers"):
        check_patterns(model, getattr(choice, key), f"{where}.{key}")


def check_patterns(model: Any, patterns: Iterable[str], key: str) -> None:
    """Fail, naming `key`, on the first of `patterns` that is neither a layer name nor a layer type of `model`."""
    known = {layer.name for layer in model.layers} | {type(layer).__name__ for layer in model.layers}
    for pattern in patterns:
        if pattern not in known:
            raise PipelineError(f"{key}: {quoted(pattern)} matches no layer name or type; the model has {', '.join(sorted(known))}")


def require_layer_graph(model: Any, where: str) -> None:
    """NeedsLayerGraph unless `model` is functional or Sequential: TFMOT wraps layers of a graph."""
    from pipeline.models.flatten import is_graph_model

    if not is_graph_model(model):
        raise NeedsLayerGraph(f"{where}: the model has no layer graph")


def is_kernel(weight: Any) -> bool:
    """Whether `weight` is a kernel: rank 2 or more and not a bias (MultiHeadAttention's biases are
    (heads, head size) matrices, which pruning leaves dense like every bias)."""
    return len(weight.shape) >= 2 and not weight.name.rsplit("/", 1)[-1].startswith("bias")


def kernel_sizes(layer: Any) -> int:
    """Number of values in `layer`'s kernels (not biases or scales)."""
    return sum(int(w.shape.num_elements()) for w in layer.weights if is_kernel(w))


def choose_layers(
    model: Any, choice: LayerChoice, why_not: Callable[[Any], str | None], where: str, verb: str, left: str
) -> dict[str, Action]:
    """For every layer with a kernel: `verb` if chosen and supported, else `left` and the reason.

    `why_not(layer)` is None for a layer the technique supports, else a short reason. A layer named
    explicitly in `layers` but not supported raises PipelineError instead of being left alone
    silently, as does a choice that leaves nothing to act on.
    """
    require_layer_graph(model, where)
    check_names(model, choice, where)
    actions: dict[str, Action] = {}
    for layer in model.layers:
        if not kernel_sizes(layer):
            continue
        if matches(layer, choice.skip_layers):
            actions[layer.name] = Action(left, "skip_layers")
        elif choice.layers and not matches(layer, choice.layers):
            actions[layer.name] = Action(left, "not in layers")
        elif (reason := why_not(layer)) is not None:
            if layer.name in choice.layers:
                named = f"layer '{layer.name}' ({type(layer).__name__})"
                raise PipelineError(f"{where}.layers: {named} is not supported here ({reason}); remove it")
            actions[layer.name] = Action(left, reason)
        else:
            actions[layer.name] = Action(verb)
    if not any(action.kind == verb for action in actions.values()):
        raise PipelineError(f"{where}.layers: no supported layer chosen; list layer names or types such as Dense, Conv2D")
    return actions


def acted_on(actions: dict[str, Action], verb: str) -> list[str]:
    """Names of the layers whose action is `verb`."""
    return [name for name, action in actions.items() if action.kind == verb]


def kernel_share(model: Any, names: Iterable[str]) -> float:
    """Share of the model's kernel weights (rank 2 or more) that the named layers hold."""
    wanted = set(names)
    total = sum(kernel_sizes(layer) for layer in model.layers)
    return sum(kernel_sizes(layer) for layer in model.layers if layer.name in wanted) / total if total else 0.0


def left_alone(model: Any, actions: dict[str, Action], verb: str) -> str:
    """One phrase for the log: the layers not acted on, why, and their share of the kernel weights.

    Many layers of one type left for one reason (every DepthwiseConv2D of a MobileNet) are counted,
    not listed; the layer plan names each.
    """
    others = {name: action for name, action in actions.items() if action.kind != verb}
    if not others:
        return "none"
    groups: dict[tuple[str, str], list[str]] = {}
    for name, action in others.items():
        groups.setdefault((type(model.get_layer(name)).__name__, action.why), []).append(name)
    listed = ", ".join(
        f"{', '.join(names)} ({why})" if len(names) <= 3 else f"{len(names)} {kind} layers ({why})"
        for (kind, why), names in groups.items()
    )
    return f"{listed}: {kernel_share(model, others):.1%} of the weights"


def wrap_layers(model: Any, names: list[str], wrap: Callable[[Any], Any]) -> Any:
    """A clone of `model` with `wrap` applied to the named layers.

    The clone reuses `model`'s layer objects (and so their trained weights); callers pass a
    model freshly loaded from its file, never one they still need unchanged.
    """
    import tf_keras as keras

    wanted = set(names)
    return keras.models.clone_model(model, clone_function=lambda layer: wrap(layer) if layer.name in wanted else layer)
