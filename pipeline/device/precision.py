"""Copies of Keras models with other layer dtypes, for mixed-precision training and float32 export.

A model built under `mixed_float16` computes in float16 but keeps float32 variables, so a copy
with other dtype policies takes the same weights. Mixed models keep their output layers in
float32 (a float16 softmax and loss lose accuracy), and every saved artifact is float32: the
TFLite converter cannot take float16 MatMuls without Flex ops.
"""

from __future__ import annotations

from typing import Any

MIXED = ("mixed_float16", "mixed_bfloat16")


def is_mixed(model: Any, policies: tuple[str, ...] = MIXED) -> bool:
    """Whether any layer of `model` (nested models included) computes under one of `policies`."""
    return any(getattr(layer.dtype_policy, "name", "") in policies for layer in all_layers(model))


def all_layers(model: Any) -> list[Any]:
    """Every layer of `model`, descending into nested models."""
    found = []
    for layer in getattr(model, "layers", []):
        found.append(layer)
        found += all_layers(layer)
    return found


def output_layer_names(model: Any) -> set[str]:
    """Names of the layers that produce `model`'s outputs."""
    from pipeline.private_api import producing_layer

    return {producing_layer(tensor).name for tensor in model.outputs}


def with_dtypes(model: Any, hidden: str | None, outputs: str | None) -> Any:
    """A copy of `model` with its weights, hidden layers under `hidden` and output layers under `outputs`.

    `None` keeps a layer's own policy. Nested models are copied with their layers' policies
    as they are; a model Keras cannot clone (subclassed) is returned unchanged.
    """
    import tf_keras as keras

    last = output_layer_names(model)

    def clone(layer: Any) -> Any:
        config = layer.get_config()
        dtype = outputs if layer.name in last else hidden
        if dtype is not None and not isinstance(layer, keras.Model):
            config["dtype"] = dtype
        return layer.__class__.from_config(config)

    try:
        copy = keras.models.clone_model(model, clone_function=clone)
    except (ValueError, TypeError, NotImplementedError):
        return model
    copy.set_weights(model.get_weights())
    return copy


def float32_copy(model: Any) -> Any:
    """`model` itself when it computes in float32 everywhere, else a float32 copy with its weights."""
    return with_dtypes(model, "float32", "float32") if is_mixed(model) else model
