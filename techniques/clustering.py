"""TFMOT weight clustering: how many clusters each kernel can hold, and checks on the clustered model."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from pipeline.errors import PipelineError
from pipeline.run.layer_plan import Action
from techniques.layers import acted_on, left_alone
from techniques.pruning import SPARSITY_TOLERANCE, pruned_sparsity


def unique_values(kernel: np.ndarray, per_channel: bool) -> int:
    """The most distinct values in `kernel` (or in any one of its output channels)."""
    if not per_channel:
        return int(np.unique(kernel).size)
    channels = kernel.reshape(-1, kernel.shape[-1])
    return max(int(np.unique(channels[:, c]).size) for c in range(channels.shape[1]))


def check_clusters(model: Any, plan: dict[str, int], per_channel: bool, stage: str) -> None:
    """Every clustered kernel holds at most the distinct values its layer was given."""
    for name, clusters in plan.items():
        found = unique_values(model.get_layer(name).get_weights()[0], per_channel)
        if clusters and found > clusters:
            raise PipelineError(
                f"stages.{stage}: layer {name} kept {found} distinct weights, more than "
                f"{clusters}; this layer type is not clustered correctly, add it to stages.{stage}.skip_layers"
            )


def layer_kernel(layer: Any) -> np.ndarray | None:
    """The weight clustering acts on (a kernel), or None for layers such as RNNs that hold several."""
    weights = layer.get_weights()
    return weights[0] if weights and weights[0].ndim >= 2 else None


def clusters_for(kernel: np.ndarray | None, wanted: int, per_channel: bool, preserve: bool) -> int:
    """The most clusters, up to `wanted`, that `kernel` can hold; 0 when it is too small to cluster.

    A kernel (or, per channel, each output channel) must have at least as many distinct values
    as clusters. Keeping zeros, TFMOT reserves one centroid for zero and shares the rest between
    the negative and positive weights in proportion to their counts; each side must then hold
    its share. TFMOT needs at least 2 clusters (3 when zeros are kept).
    """
    if kernel is None:
        return wanted
    groups = kernel.reshape(-1, kernel.shape[-1]).T if per_channel and kernel.ndim == 4 else [kernel.ravel()]
    fewest = 3 if preserve else 2
    for clusters in range(wanted, fewest - 1, -1):
        if all(holds(values, clusters, preserve) for values in groups):
            return clusters
    return 0


def holds(values: np.ndarray, clusters: int, preserve: bool) -> bool:
    """Whether TFMOT's centroid initialisation can place `clusters` centroids among `values`."""
    if not preserve:
        return np.unique(values).size >= clusters
    negative, positive = values[values < 0], values[values > 0]
    if not negative.size + positive.size:
        return False
    # As TFMOT splits them: round((clusters - 1) * share of negatives), both rounding half to even.
    on_negative = int(np.round((clusters - 1) * negative.size / (negative.size + positive.size)))
    return np.unique(negative).size >= on_negative and np.unique(positive).size >= clusters - 1 - on_negative


def fitted_clusters(model: Any, actions: dict[str, Action], wanted: int, per_channel: bool, preserve: bool) -> dict[str, int]:
    """The clusters each layer chosen for clustering gets: what its kernel can hold, up to the `wanted` number.

    k-means++ seeding fails outright when a kernel holds fewer distinct weights than the clusters
    asked for (after heavy pruning, or per channel); such a layer gets what it can hold, and one
    that can hold too few is marked `unclustered` in `actions`.
    """
    plan = {}
    for name in acted_on(actions, "clustered"):
        plan[name] = clusters_for(layer_kernel(model.get_layer(name)), wanted, per_channel, preserve)
        if not plan[name]:
            actions[name] = Action("unclustered", "too few distinct weights")
    return plan


def report_plan(
    model: Any, actions: dict[str, Action], plan: dict[str, int], wanted: int, preserve: bool, log: logging.Logger
) -> None:
    """Log how many layers are clustered, which are left unclustered (why, and their share of the
    weights), and which get fewer clusters than asked for."""
    clustered = acted_on(actions, "clustered")
    log.info("    clustering %d layers to %d values%s; left unclustered: %s", len(clustered), wanted,
             ", keeping zeros" if preserve else "", left_alone(model, actions, "clustered"))
    for name, n in plan.items():
        if 0 < n < wanted:
            log.warning("    %s: too few distinct weights for %d clusters; clustered to %d", name, wanted, n)


def check_kept_sparsity(model: Any, metadata: dict[str, Any], stage: str) -> None:
    """With sparsity preservation, the pruned layers are still at their target sparsity."""
    target = float(metadata.get("target_sparsity", 0.0))
    achieved = pruned_sparsity(model, metadata.get("pruned_layers"))
    if achieved < target - SPARSITY_TOLERANCE:
        raise PipelineError(
            f"stages.{stage}: clustering lowered sparsity to {achieved:.1%} from {target:.1%}; "
            f"set stages.{stage}.preserve_sparsity=true"
        )
