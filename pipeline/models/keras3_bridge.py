"""Carry a model between Keras 3 and tf-keras: run as `python -m pipeline.models.keras3_bridge`.

Keras 3 files do not load in tf-keras and tf-keras files do not load in Keras 3, but both
describe a model the same way underneath: layer configs and the connections between layers. This
program loads the source model with its own Keras, translates its config into the other Keras's
dialect (dtype policies to their names, tensor references between the two node formats, keys one
side does not know dropped; initializers dropped since the weights are copied), builds the model
there, copies every layer's weights and checks the rebuild by comparing predictions on a sample.
A layer that cannot be carried, or whose outputs differ, is named in one line.

It runs in its own process, the only place where both Keras versions are imported, so that the
pipeline's tf-keras is never touched by Keras 3. The result is a JSON report:
`{"ok": true, "max_abs_diff": ...}` or `{"ok": false, "error": "layer 'x' (Foo): ..."}`.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

# Keys every layer takes through its base class, whichever Keras reads the config.
BASE_KEYS = {"name", "trainable", "dtype", "batch_input_shape", "batch_shape", "input_shape", "input_dim", "dynamic"}
# Where Keras 3 keeps its model classes (layers are in keras.layers).
KERAS3_MODULES = {"Functional": "keras.src.models.functional", "Sequential": "keras"}
# Outputs may differ by float rounding only: the layers compute the same operations.
TOLERANCE = 1e-4


class CannotCarry(Exception):
    """A model that the bridge cannot carry over; the message names the layer."""


class Dialect:
    """One Keras version: its module, whether it is Keras 3, and its class lookup."""

    def __init__(self, keras: Any, version3: bool):
        self.keras = keras
        self.version3 = version3

    def layer_class(self, class_name: str) -> Any:
        """The class called `class_name` in this Keras, or None."""
        if class_name in ("Functional", "Model"):
            return self.keras.Model
        if class_name == "Sequential":
            return self.keras.Sequential
        return getattr(self.keras.layers, class_name, None)


def dialects() -> tuple[Dialect, Dialect]:
    """(Keras 3, tf-keras), both imported in this process."""
    import keras
    import tf_keras

    return Dialect(keras, True), Dialect(tf_keras, False)


def translate_model(config: dict, source: Dialect, target: Dialect) -> dict:
    """A serialised model (or layer) of `source` as `target` would write it."""
    class_name = config["class_name"]
    inner = dict(config["config"])
    if class_name in ("Functional", "Model", "Sequential"):
        inner.pop("dtype", None)
        # tf-keras counts a nested model's own graph as its first node, Keras 3 does not.
        models = {e.get("name") for e in inner["layers"] if e["class_name"] in ("Functional", "Model", "Sequential")}
        inner["layers"] = [translate_entry(entry, source, target, models) for entry in inner["layers"]]
        if class_name != "Sequential":
            inner["input_layers"] = as_refs(inner["input_layers"], target)
            inner["output_layers"] = as_refs(inner["output_layers"], target)
        class_name = "Functional" if class_name == "Model" else class_name
        return with_module({"class_name": class_name, "config": inner}, target)
    return with_module({"class_name": class_name, "config": translate_layer(class_name, inner, target)}, target)


def with_module(config: dict, target: Dialect) -> dict:
    """Keras 3 finds a built-in class by module and name; tf-keras by name alone."""
    if target.version3:
        config["module"] = KERAS3_MODULES.get(config["class_name"], "keras.layers")
    return config


def translate_entry(entry: dict, source: Dialect, target: Dialect, models: set[str]) -> dict:
    """One entry of a model's `layers` list: the layer, plus its connections in a functional model."""
    translated = translate_model(entry, source, target)
    for key in ("name", "inbound_nodes"):
        if key in entry:
            translated[key] = entry[key]
    if "inbound_nodes" in entry:
        name = entry.get("name", translated["config"].get("name"))
        translated["inbound_nodes"] = [translate_node(node, source, target, name, models) for node in entry["inbound_nodes"]]
    return translated


def translate_layer(class_name: str, config: dict, target: Dialect) -> dict:
    """A layer's config with the keys `target` understands, in its spelling."""
    name = config.get("name", class_name)
    cls = target.layer_class(class_name)
    if cls is None:
        raise CannotCarry(f"layer '{name}' ({class_name}) has no counterpart in {keras_name(target)}")
    config = {key: plain_value(key, value) for key, value in config.items() if not key.endswith("_initializer")}
    if class_name == "InputLayer":
        shape = config.pop("batch_shape", None) or config.pop("batch_input_shape", None)
        config["batch_shape" if target.version3 else "batch_input_shape"] = shape
    accepted = accepted_keys(cls)
    if accepted is not None:
        config = {key: value for key, value in config.items() if key in accepted or key in BASE_KEYS}
    if target.version3:
        config.pop("batch_input_shape", None)
        if class_name == "BatchNormalization" and isinstance(config.get("axis"), list) and len(config["axis"]) == 1:
            config["axis"] = config["axis"][0]  # tf-keras writes [3], Keras 3 takes one axis
    return config


def plain_value(key: str, value: Any) -> Any:
    """Config values both Keras versions read: dtype policies by name, objects as class and config."""
    if isinstance(value, dict) and str(value.get("class_name", "")).endswith("DTypePolicy"):
        return value["config"]["name"]
    if isinstance(value, dict) and "class_name" in value and "config" in value and key != "config":
        return {"class_name": value["class_name"], "config": value["config"]}
    return value


def accepted_keys(cls: Any) -> set[str] | None:
    """Constructor arguments of a layer class; None when it takes anything (**kwargs only)."""
    try:
        parameters = inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):
        return None
    named = {name for name, p in parameters.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    return named - {"self"} or None


def translate_node(node: Any, source: Dialect, target: Dialect, layer: str, models: set[str]) -> Any:
    """One call of a layer in a functional model, from `source`'s node format to `target`'s.

    Keras 3 writes `{"args": [tensor or [tensors]], "kwargs": {...}}` with tensors as
    `{"class_name": "__keras_tensor__", "config": {"keras_history": [name, node, index]}}`, and
    reads tf-keras's `[[name, node, index, kwargs], ...]` too; tf-keras counts the calls of a
    nested model (one of `models`) from 1, Keras 3 from 0.
    """
    if source.version3 and not target.version3:
        args, kwargs = node.get("args", []), {k: v for k, v in node.get("kwargs", {}).items() if v is not None}
        if len(args) != 1 or any(is_tensor(v) for v in json_leaves(kwargs)):
            raise CannotCarry(f"layer '{layer}' is called with several tensor arguments, which tf-keras configs cannot express")
        tensors = args[0] if isinstance(args[0], list) else [args[0]]
        if not all(is_tensor(t) for t in tensors):
            raise CannotCarry(f"layer '{layer}' is called with a value that is not a tensor")
        refs = [t["config"]["keras_history"] for t in tensors]
        return [[name, index + (name in models), tensor, kwargs] for name, index, tensor in refs]
    if not source.version3 and target.version3:  # Keras 3 still reads tf-keras's list format
        return [[name, index - (name in models), tensor, *rest] for name, index, tensor, *rest in node]
    return node


def is_tensor(value: Any) -> bool:
    """Whether a config value is a reference to a Keras 3 tensor."""
    return isinstance(value, dict) and value.get("class_name") == "__keras_tensor__"


def json_leaves(value: Any) -> list[Any]:
    """Dicts and scalars inside nested lists and dicts (tensor references are dicts)."""
    if is_tensor(value):
        return [value]
    if isinstance(value, dict):
        return [leaf for item in value.values() for leaf in json_leaves(item)]
    if isinstance(value, list):
        return [leaf for item in value for leaf in json_leaves(item)]
    return [value]


def as_refs(refs: list, target: Dialect) -> list:
    """Model inputs or outputs as `target` writes them: a list of [name, node, index], or for
    Keras 3 a single one bare (a list of one would make it expect a list of inputs)."""
    refs = [refs] if refs and isinstance(refs[0], str) else refs
    return refs[0] if target.version3 and len(refs) == 1 else refs


def keras_name(dialect: Dialect) -> str:
    """How a person calls this Keras."""
    return "Keras 3" if dialect.version3 else "tf-keras"


def rebuild(model: Any, source: Dialect, target: Dialect) -> Any:
    """`model` rebuilt in `target`'s Keras with the same weights (no check of its outputs yet)."""
    if not isinstance(model, (source.keras.Sequential, source.keras.Model)) or type(model).__name__ not in (
        "Functional", "Sequential", "Model",
    ):
        raise CannotCarry(f"model '{model.name}' is a subclassed {type(model).__name__}; only functional and Sequential models carry over")
    config = translate_model(source.keras.saving.serialize_keras_object(model) if source.version3 else
                             {"class_name": type(model).__name__, "config": model.get_config()}, source, target)
    try:
        rebuilt = deserialize(config, target)
    except Exception as error:  # noqa: BLE001 - deserialisers raise anything; name what failed
        raise CannotCarry(failing_layer(config, target) or f"{keras_name(target)} cannot build the model ({one_line(error)})") from None
    copy_weights(model, rebuilt)
    return rebuilt


def deserialize(config: dict, target: Dialect) -> Any:
    """A model or layer of `target`'s Keras from its translated config (tf-keras reads either from JSON)."""
    if target.version3:
        return target.keras.saving.deserialize_keras_object(config)
    return target.keras.models.model_from_json(json.dumps(config))


def failing_layer(config: dict, target: Dialect) -> str | None:
    """The first layer (in nested models too) that `target`'s Keras cannot build from its config, named."""
    for entry in config["config"].get("layers", []):
        if "layers" in entry["config"]:
            found = failing_layer(entry, target)
        else:
            try:
                layer = {key: entry[key] for key in ("class_name", "config", "module") if key in entry}
                deserialize(layer, target)
                found = None
            except Exception as error:  # noqa: BLE001
                named = f"layer '{entry['config'].get('name')}' ({entry['class_name']})"
                found = f"{named} cannot be rebuilt in {keras_name(target)} ({one_line(error)})"
        if found:
            return found
    return None


def copy_weights(source: Any, target: Any) -> None:
    """Copy each layer's weights by layer name, descending into nested models."""
    for layer in source.layers:
        twin = target.get_layer(layer.name)
        if hasattr(layer, "layers"):
            copy_weights(layer, twin)
            continue
        weights = [np.asarray(w) for w in layer.get_weights()]
        shapes, wanted = [w.shape for w in weights], [tuple(w.shape) for w in twin.get_weights()]
        if shapes != wanted:
            raise CannotCarry(
                f"layer '{layer.name}' ({type(layer).__name__}) holds weights of shapes {shapes} but its rebuild takes {wanted}"
            )
        twin.set_weights(weights)
        if weights and hasattr(twin, "finalize_state"):
            twin.finalize_state()  # Keras 3's Normalization derives its statistics from the weights here


def leaves(model: Any) -> list[Any]:
    """Every layer of `model` that is not itself a model, in order."""
    found = []
    for layer in model.layers:
        found += leaves(layer) if hasattr(layer, "layers") else [layer]
    return found


def find_differing_layer(model: Any, rebuilt: Any) -> str:
    """Which layer computes differently after the rebuild, tried one layer at a time on random inputs."""
    rng = np.random.default_rng(0)
    for layer in leaves(model):
        if type(layer).__name__ == "InputLayer":
            continue
        twin = find_layer(rebuilt, layer.name)
        try:
            shapes = input_shapes(layer)
        except (AttributeError, ValueError, RuntimeError):
            continue  # an input layer, or one whose input shape is not recorded
        inputs = [rng.standard_normal([2, *[d or 8 for d in s[1:]]]).astype("float32") for s in shapes]
        arg = inputs if len(inputs) > 1 else inputs[0]
        try:
            expected, got = np.asarray(layer(arg, training=False)), np.asarray(twin(arg, training=False))
        except Exception as error:  # noqa: BLE001
            return f"layer '{layer.name}' ({type(layer).__name__}) fails in its rebuild ({one_line(error)})"
        if expected.shape != got.shape or not close(expected, got):
            return f"layer '{layer.name}' ({type(layer).__name__}) computes differently after the rebuild"
    return "the connections between layers differ after the rebuild"


def find_layer(model: Any, name: str) -> Any:
    """The layer called `name` anywhere inside `model`."""
    return next(layer for layer in leaves(model) if layer.name == name)


def input_shapes(layer: Any) -> list[tuple]:
    """The shapes a layer was called with (one per input tensor)."""
    inputs = layer.input
    tensors = inputs if isinstance(inputs, (list, tuple)) else [inputs]
    return [tuple(t.shape) for t in tensors]


def close(expected: np.ndarray, got: np.ndarray) -> bool:
    """Equal up to float rounding, relative to the size of the outputs."""
    return float(np.max(np.abs(expected - got), initial=0.0)) <= TOLERANCE * max(1.0, float(np.max(np.abs(expected), initial=0.0)))


def one_line(error: BaseException) -> str:
    """An exception's message on one line, cut to a readable length."""
    return " ".join(str(error).split())[:300]


def outputs(model: Any, x: np.ndarray) -> np.ndarray:
    """The model's predictions for `x` in inference mode."""
    return np.asarray(model(x, training=False), dtype=np.float32)


def carry(source_path: Path, target_path: Path, sample: np.ndarray | None, to_keras3: bool, safe_mode: bool) -> dict[str, Any]:
    """Load, rebuild, check and save; the report as a dict."""
    keras3, tf_keras = dialects()
    source, target = (tf_keras, keras3) if to_keras3 else (keras3, tf_keras)
    try:
        if source.version3:
            model = source.keras.saving.load_model(source_path, compile=False, safe_mode=safe_mode)
        else:
            model = source.keras.models.load_model(source_path, compile=False, safe_mode=safe_mode)
    except Exception as error:  # noqa: BLE001 - loaders raise anything from ValueError to OSError
        raise CannotCarry(f"{keras_name(source)} cannot load it ({one_line(error)})") from None
    rebuilt = rebuild(model, source, target)
    if sample is None:  # no data at hand: inputs in [0, 1), the range the pipeline's data sources give
        shape = [d or 32 for d in model.inputs[0].shape[1:]]
        sample = np.random.default_rng(0).random((16, *shape), dtype=np.float32)
    expected, got = outputs(model, sample), outputs(rebuilt, sample)
    same_shape = expected.shape == got.shape
    difference = float(np.max(np.abs(expected - got), initial=0.0)) if same_shape else float("inf")
    if not same_shape or not close(expected, got):
        raise CannotCarry(f"{find_differing_layer(model, rebuilt)} (largest output difference {difference:.3g})")
    rebuilt.save(target_path)
    return {"ok": True, "max_abs_diff": difference, "layers": len(leaves(model)), "examples": len(sample)}


def main(argv: list[str] | None = None) -> None:
    """Command line: SOURCE TARGET REPORT.json [--sample SAMPLE.npy] [--to-keras3] [--unsafe]."""
    parser = argparse.ArgumentParser(prog="python -m pipeline.models.keras3_bridge", description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("target", type=Path)
    parser.add_argument("report", type=Path)
    parser.add_argument("--sample", type=Path, help="a .npy batch of inputs to compare predictions on (default: random)")
    parser.add_argument("--to-keras3", action="store_true", help="tf-keras -> Keras 3 (default: Keras 3 -> tf-keras)")
    parser.add_argument("--unsafe", action="store_true", help="allow files that run Python code when loaded")
    args = parser.parse_args(argv)
    try:
        sample = np.load(args.sample) if args.sample else None
        report = carry(args.source, args.target, sample, args.to_keras3, not args.unsafe)
    except CannotCarry as error:
        report = {"ok": False, "error": str(error)}
    args.report.write_text(json.dumps(report))


if __name__ == "__main__":
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    main()
