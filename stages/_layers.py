"""Choosing which layers a compression stage wraps, by layer name or layer type."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from pydantic import Field

from pipeline.errors import PipelineError
from pipeline.schema import Params


class LayerChoice(Params):
    """Which layers a stage acts on; mixed into prune and cluster parameters."""

    layers: list[str] = Field(
        default_factory=list,
        description="Layer names or types (e.g. Dense, Conv2D) to act on; empty: every supported layer.",
    )
    skip_layers: list[str] = Field(
        default_factory=list, description="Layer names or types left untouched, even when listed in `layers`."
    )


def matches(layer: Any, patterns: list[str]) -> bool:
    """Whether `layer`'s name or class name is among `patterns`."""
    return layer.name in patterns or type(layer).__name__ in patterns


def check_names(model: Any, choice: LayerChoice, where: str) -> None:
    """Fail on a name or type that matches no layer: a typo would otherwise select nothing."""
    for key in ("layers", "skip_layers"):
        check_patterns(model, getattr(choice, key), f"{where}.{key}")


def check_patterns(model: Any, patterns: Iterable[str], key: str) -> None:
    """Fail, naming `key`, on the first of `patterns` that is neither a layer name nor a layer type of `model`."""
    known = {layer.name for layer in model.layers} | {type(layer).__name__ for layer in model.layers}
    for pattern in patterns:
        if pattern not in known:
            raise PipelineError(f"{key}: '{pattern}' matches no layer name or type; the model has {', '.join(sorted(known))}")


def chosen_layers(model: Any, choice: LayerChoice, supported: Callable[[Any], bool], where: str) -> list[Any]:
    """The layers of `model` that `choice` picks and `supported` accepts.

    Layers named explicitly in `layers` but not supported raise PipelineError instead of being
    left alone silently, and so does a choice that picks nothing.
    """
    check_names(model, choice, where)
    picked = []
    for layer in model.layers:
        if matches(layer, choice.skip_layers) or (choice.layers and not matches(layer, choice.layers)):
            continue
        if not supported(layer):
            if layer.name in choice.layers:
                raise PipelineError(f"{where}.layers: layer '{layer.name}' ({type(layer).__name__}) is not supported here; remove it")
            continue
        picked.append(layer)
    if not picked:
        raise PipelineError(f"{where}.layers: no supported layer chosen; list layer names or types such as Dense, Conv2D")
    return picked


def wrap_chosen(
    model: Any, choice: LayerChoice, supported: Callable[[Any], bool], wrap: Callable[[Any], Any], where: str
) -> tuple[Any, list[str]]:
    """A clone of `model` with `wrap` applied to each chosen, supported layer, and their names."""
    import tf_keras as keras

    names = [layer.name for layer in chosen_layers(model, choice, supported, where)]
    # The clone reuses `model`'s layer objects (and so their trained weights); callers pass a
    # model freshly loaded from its file, never one they still need unchanged.
    cloned = keras.models.clone_model(model, clone_function=lambda layer: wrap(layer) if layer.name in names else layer)
    return cloned, names
