"""Which output channels of a flat tf-keras graph can be removed together, and what each removal touches.

Every layer that makes new channels (Conv, Dense, SeparableConv: a *producer*) starts a channel
group. Layers that act on each channel alone (BatchNormalization, activations, pooling, padding,
DepthwiseConv2D with depth multiplier 1) pass their input's channels through. Add, Multiply and
the other element-wise merges tie the groups of their inputs channel by channel (a residual
connection: removing channel 3 of one branch means removing it from the other too), and
Concatenate lays groups side by side. Flatten repeats its input's channels once per spatial
position, so a Dense layer after it loses one input row per position and removed channel.

Anything else (a custom layer, LayerNormalization, Reshape, a softmax over channels, the model's
outputs) fixes the channels it sees: they are never removed, and the graph says which layer fixed
them (`why_fixed`). The analysis is conservative: what it does not understand stays as it is.

A layer called more than once (a shared block of a flattened model) has one set of weights: a
producer or per-channel layer keeps one channel group for all its calls, which works when every
call sees the same input channels, and fixes them otherwise.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from pipeline.private_api import nodes_by_depth, producing_layer

# Layers that make new channels from all input channels: kernel[..., in, out].
PRODUCERS = ("Dense", "Conv1D", "Conv2D", "Conv3D", "SeparableConv1D", "SeparableConv2D")
# Layers that act on each channel on its own and hold no weights.
PASS_THROUGH = (
    "ReLU", "LeakyReLU", "ELU", "ThresholdedReLU", "Dropout", "SpatialDropout1D", "SpatialDropout2D",
    "SpatialDropout3D", "GaussianNoise", "GaussianDropout", "AlphaDropout", "ActivityRegularization",
    "MaxPooling1D", "MaxPooling2D", "MaxPooling3D", "AveragePooling1D", "AveragePooling2D", "AveragePooling3D",
    "GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalAveragePooling3D", "GlobalMaxPooling1D",
    "GlobalMaxPooling2D", "GlobalMaxPooling3D", "ZeroPadding1D", "ZeroPadding2D", "ZeroPadding3D",
    "Cropping1D", "Cropping2D", "Cropping3D", "UpSampling1D", "UpSampling2D", "UpSampling3D", "Resizing",
)
# Per-channel layers whose weights follow their input's channels.
PER_CHANNEL = ("BatchNormalization", "DepthwiseConv1D", "DepthwiseConv2D")
MERGES = ("Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum")
# Activations that mix channels: channels before them cannot be removed.
MIXING_ACTIVATIONS = ("softmax", "log_softmax")


@dataclass(frozen=True)
class Layout:
    """The channels along a tensor's last axis: whole groups side by side, repeated `repeat` times.

    `repeat` > 1 after Flatten: element `p * width + j` is channel `j` at spatial position `p`.
    """

    groups: tuple[int, ...]
    repeat: int = 1


@dataclass
class ChannelGraph:
    """Channel groups of one model, tied where removals must agree.

    `size[g]` is the width of group g; `find(g)` its representative after tying; `fixed` the
    representatives that must keep every channel, and `fixed_by` why (for the plan and errors). `producers[g]` names the layers whose output
    channels are group g (several after tying). `inputs[layer]` and `outputs[layer]` are the
    layouts a rebuilt layer slices its weights by; `role[layer]` says how (producer, per_channel,
    reshape), and layers without a role keep their weights.
    """

    size: list[int] = field(default_factory=list)
    parent: list[int] = field(default_factory=list)
    fixed_groups: set[int] = field(default_factory=set)
    fixed_by: dict[int, str] = field(default_factory=dict)
    producer_group: dict[str, int] = field(default_factory=dict)
    inputs: dict[str, Layout] = field(default_factory=dict)
    outputs: dict[str, Layout] = field(default_factory=dict)
    role: dict[str, str] = field(default_factory=dict)
    followed_by: dict[str, str] = field(default_factory=dict)  # producer -> the BatchNormalization right after it

    def new_group(self, size: int, fixed: str | None = None) -> int:
        """A fresh group of `size` channels; `fixed` says why they must all stay, if they must."""
        self.size.append(size)
        self.parent.append(len(self.parent))
        group = len(self.parent) - 1
        if fixed:
            self.fixed_groups.add(group)
            self.fixed_by[group] = fixed
        return group

    def find(self, group: int) -> int:
        """The representative of `group`'s tied set."""
        while self.parent[group] != group:
            self.parent[group] = self.parent[self.parent[group]]
            group = self.parent[group]
        return group

    def tie(self, first: int, second: int) -> None:
        """Make two equally wide groups remove the same channels."""
        a, b = self.find(first), self.find(second)
        if a != b:
            self.parent[b] = a
            if b in self.fixed_groups:
                self.fixed_groups.add(a)
                self.fixed_by.setdefault(a, self.fixed_by.get(b, ""))

    def fix(self, layout: Layout, why: str) -> None:
        """Keep every channel of the groups in `layout`, because of `why`."""
        for group in layout.groups:
            root = self.find(group)
            self.fixed_groups.add(root)
            self.fixed_by.setdefault(root, why)

    def why_fixed(self, group: int) -> str | None:
        """Why `group`'s channels must all stay (the layer that needs them), or None when they may go."""
        return self.fixed_by.get(self.find(group), "") if self.fixed(group) else None

    def fixed(self, group: int) -> bool:
        """Whether `group`'s channels must all stay."""
        return self.find(group) in self.fixed_groups

    def producers(self) -> dict[int, list[str]]:
        """Representative -> the producer layers whose output channels it is."""
        tied: dict[int, list[str]] = {}
        for name, group in self.producer_group.items():
            tied.setdefault(self.find(group), []).append(name)
        return tied

    def prunable(self) -> dict[int, list[str]]:
        """Representative -> producers, for the groups whose channels may be removed."""
        return {root: names for root, names in self.producers().items() if root not in self.fixed_groups}


def width(graph: ChannelGraph, layout: Layout) -> int:
    """Number of channels a layout spans along the last axis (repeats included)."""
    return layout.repeat * sum(graph.size[g] for g in layout.groups)


def nested_model(model: Any) -> str | None:
    """The name of the first layer that is itself a model, or None for a flat graph."""
    import tf_keras as keras

    return next((layer.name for layer in model.layers if isinstance(layer, keras.Model)), None)


def analyse(model: Any) -> ChannelGraph:
    """Channel groups and layouts of every layer of a flat functional (or Sequential) model."""
    graph = ChannelGraph()
    layouts: dict[int, Layout] = {}  # id of a KerasTensor -> its channels
    by_depth = nodes_by_depth(model)
    nodes = [node for depth in sorted(by_depth, reverse=True) for node in by_depth[depth]]
    # Calls in this model only: a layer reused from another model (a flattened one) has nodes there too.
    calls = Counter(node.layer.name for node in nodes)
    for node in nodes:  # inputs first
        inputs = [layouts[id(t)] for t in node.keras_inputs]
        outputs = _flat(node.outputs)
        before = tuple(node.keras_inputs[0].shape) if node.keras_inputs else ()
        call = Call(node.layer, inputs, outputs, before, tuple(outputs[0].shape), calls[node.layer.name] > 1)
        made = _visit(graph, call)
        if type(node.layer).__name__ == "BatchNormalization" and graph.role.get(node.layer.name) == "per_channel":
            source = producing_layer(node.keras_inputs[0]).name
            if source in graph.producer_group:
                graph.followed_by[source] = node.layer.name
        for tensor, layout in zip(outputs, made):
            layouts[id(tensor)] = layout
    for tensor in model.outputs:  # the classes, or whatever a model hands on, stay
        graph.fix(layouts[id(tensor)], "feeds the model's outputs")
    return graph


def _flat(tensors: Any) -> list[Any]:
    return list(tensors) if isinstance(tensors, (list, tuple)) else [tensors]


def _channels(tensor: Any) -> int:
    last = tensor.shape[-1] if tensor.shape.rank else None
    return int(last) if last is not None else 0


@dataclass(frozen=True)
class Call:
    """One call of a layer in the model: the layouts it gets, the tensors it makes, and their shapes."""

    layer: Any
    inputs: list[Layout]
    outputs: list[Any]
    before: tuple  # shape of the first input, batch axis included
    after: tuple  # shape of the first output
    shared: bool  # the layer is called more than once in this model


def _visit(graph: ChannelGraph, call: Call) -> list[Layout]:
    """Record what one layer call does to channels; the layouts of its outputs."""
    layer, inputs, outputs = call.layer, call.inputs, call.outputs
    kind = type(layer).__name__
    config = layer.get_config()
    if not inputs:  # an InputLayer: the data's channels
        return [Layout((graph.new_group(_channels(t), fixed="the model's inputs"),)) for t in outputs]
    if config.get("data_format", "channels_last") != "channels_last":
        return _opaque(graph, call)
    if call.shared and layer.name in graph.role:  # a later call of a layer with weights: one group for all calls
        return _shared_call(graph, call)
    if kind in PRODUCERS and _simple_producer(config):
        graph.inputs[layer.name], graph.role[layer.name] = inputs[0], "producer"
        # A producer whose own activation mixes its channels (a softmax) must keep them all.
        mixing = f"its {config.get('activation')} mixes its channels" if config.get("activation") in MIXING_ACTIVATIONS else None
        group = graph.new_group(_channels(outputs[0]), fixed=mixing)
        graph.producer_group[layer.name] = group
        graph.outputs[layer.name] = Layout((group,))
        return [graph.outputs[layer.name]]
    if kind in PER_CHANNEL and _per_channel(kind, config, inputs[0], len(call.before)):
        graph.inputs[layer.name] = graph.outputs[layer.name] = inputs[0]
        graph.role[layer.name] = "per_channel"
        return [inputs[0]]
    if kind in PASS_THROUGH or (kind == "Activation" and config["activation"] not in MIXING_ACTIVATIONS):
        return [inputs[0]]
    if kind == "Flatten":
        spatial = math.prod(int(d) for d in call.before[1:-1]) if len(call.before) > 2 else 1
        return [Layout(inputs[0].groups, inputs[0].repeat * spatial)]
    if kind in MERGES and _tie_all(graph, inputs):
        return [inputs[0]]
    if kind == "Concatenate" and config["axis"] in (-1, len(call.after) - 1) and all(i.repeat == 1 for i in inputs):
        return [Layout(tuple(g for layout in inputs for g in layout.groups))]
    if kind == "Reshape" and not call.shared and inputs[0].repeat == 1 and _keeps_last_axis(call.before, call.after):
        graph.role[layer.name], graph.outputs[layer.name] = "reshape", inputs[0]
        return [inputs[0]]
    return _opaque(graph, call)


def _opaque(graph: ChannelGraph, call: Call) -> list[Layout]:
    """A layer the surgery does not understand: its inputs keep every channel, its outputs are new."""
    named = f"{call.layer.name} ({type(call.layer).__name__})"
    for layout in call.inputs:
        graph.fix(layout, f"feeds {named}, which channel pruning leaves whole")
    return [Layout((graph.new_group(_channels(t), fixed=f"made by {named}"),)) for t in call.outputs]


def _shared_call(graph: ChannelGraph, call: Call) -> list[Layout]:
    """A second (or later) call of a producer or per-channel layer: the channels of its first call.

    Its weights follow one input layout; a call on other input channels fixes both calls' channels.
    """
    name = call.layer.name
    first = graph.inputs[name]
    if not _same_layout(graph, call.inputs[0], first):
        why = f"{name} is called on inputs with different channels"
        for layout in (first, call.inputs[0], graph.outputs[name]):
            graph.fix(layout, why)
    return [graph.outputs[name]]


def _same_layout(graph: ChannelGraph, first: Layout, second: Layout) -> bool:
    """Whether two layouts are the same channel groups, repeated alike."""
    return first.repeat == second.repeat and [graph.find(g) for g in first.groups] == [graph.find(g) for g in second.groups]


def _simple_producer(config: dict[str, Any]) -> bool:
    """Convolutions with groups or a depth multiplier mix channels in ways the surgery leaves alone."""
    return config.get("groups", 1) == 1 and config.get("depth_multiplier", 1) == 1


def _per_channel(kind: str, config: dict[str, Any], layout: Layout, rank: int) -> bool:
    """BatchNormalization over the last axis, depthwise convolutions that keep the channel count."""
    if kind == "BatchNormalization":
        axis = config["axis"]
        axes = axis if isinstance(axis, list) else [axis]
        return layout.repeat == 1 and [a % rank for a in axes] == [rank - 1]
    return config.get("depth_multiplier", 1) == 1 and layout.repeat == 1


def _tie_all(graph: ChannelGraph, inputs: list[Layout]) -> bool:
    """Tie element-wise merge inputs group by group; False (nothing tied) when their layouts differ."""
    first = inputs[0]
    sizes = [graph.size[g] for g in first.groups]
    if any(i.repeat != first.repeat or [graph.size[g] for g in i.groups] != sizes for i in inputs):
        return False  # broadcasting or mismatched segments: left to the opaque rule
    for other in inputs[1:]:
        for a, b in zip(first.groups, other.groups):
            graph.tie(a, b)
    return True


def _keeps_last_axis(before: tuple, after: tuple) -> bool:
    """A Reshape such as (C,) -> (1, 1, C) that keeps the channel axis whole and last."""
    inner = [d for shape in (before, after) for d in shape[1:-1]]
    return before[-1] == after[-1] and None not in inner and math.prod(inner) == 1
