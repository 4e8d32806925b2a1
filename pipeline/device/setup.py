"""Where training runs: the `device` config group's lazy resolution to a tf.distribute strategy.

`DeviceParams` (in pipeline.device.params) is checked with the rest of the recipe, without
TensorFlow. `DeviceSetup` turns it into facts (device kind, strategy, precision, XLA) the first
time a run needs them, and gives stages a `scope()` that creates models and optimizers on the
right devices, fixed batch sizes, and tf.data input pipelines.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pipeline.device import probe
from pipeline.device.params import DeviceParams, Kind, Resolution, WorkerRole, worker_role
from pipeline.device.precision import MIXED, with_dtypes
from pipeline.errors import PipelineError

__all__ = ["DeviceParams", "DeviceSetup", "Kind", "Resolution", "WorkerRole", "worker_role"]


class DeviceSetup:
    """The device config of one run, resolved on first use (TensorFlow is imported only then)."""

    def __init__(self, params: DeviceParams):
        self.params = params
        self.role = worker_role()
        self._resolution: Resolution | None = None
        self._strategy: Any = None

    def resolve(self) -> Resolution:
        """Pick the device, strategy and precision; PipelineError when what is asked for is absent."""
        if self._resolution is None:
            self._resolution = probe.resolve(self.params, self.role)
        return self._resolution

    def start(self) -> Resolution:
        """Resolve, and create a multi-worker strategy at once: it must exist before TensorFlow runs any op."""
        if self.resolve().strategy == "multi_worker":
            self.strategy  # noqa: B018  (created for its side effect on TensorFlow's runtime)
        return self.resolve()

    @property
    def strategy(self) -> Any:
        """The tf.distribute strategy, created once (multi-worker needs it before other TF work)."""
        if self._strategy is None:
            self._strategy, self._resolution = probe.make_strategy(self.resolve(), self.params)
        return self._strategy

    @property
    def multi_worker(self) -> bool:
        """Whether several processes train together (every worker must run every stage)."""
        return self.resolve().strategy == "multi_worker"

    @contextmanager
    def scope(self) -> Iterator[None]:
        """Models, optimizers and compiles made inside live on the strategy's devices.

        The global Keras dtype policy stays float32: TFMOT's wrappers break under a mixed
        global policy (float16 inputs meet float32 masks), so `place_model` sets policies per layer.
        """
        with self.strategy.scope():
            yield

    def numerics(self) -> dict[str, Any]:
        """The resolved settings that change what training computes, for the stage cache key."""
        resolution = self.resolve()
        return {
            "precision": resolution.precision,
            "drop_remainder": resolution.drop_remainder,
            "batch_factor": resolution.replicas if self.params.batch_size == "per_replica" else 1,
        }

    def global_batch(self, batch_size: int) -> int:
        """Examples per training step over all replicas, for a stage's `batch_size`."""
        if self.params.batch_size == "per_replica":
            return batch_size * self.resolve().replicas
        return batch_size

    def steps(self, examples: int, batch_size: int) -> int:
        """Training steps per epoch over `examples` (the last batch may be partial unless dropped)."""
        batch = self.global_batch(batch_size)
        if self.resolve().drop_remainder:
            return max(examples // batch, 1)
        return -(-examples // batch)

    def dataset(self, x: Any, y: Any, batch_size: int, seed: int | None = None, cache: bool = False) -> Any:
        """A tf.data pipeline over a split (an array or a streamed one): cached, shuffled when
        seeded, batched, prefetched.

        In-memory arrays are cached in memory; a streamed split is decoded in parallel as it is
        read and cached on disk (when the run has a stage cache). Under multi-worker training
        each worker reads its own shard of a streamed split's files; arrays have no files to shard
        by, so every worker reads every example and TensorFlow shards the batches by position.
        """
        import tensorflow as tf

        from pipeline.data.streaming import is_streamed

        resolution = self.resolve()
        batch = self.global_batch(batch_size)
        if resolution.drop_remainder and len(x) < batch:
            raise PipelineError(
                f"device.drop_remainder: {len(x)} examples make no full batch of {batch}; "
                "lower the stage's batch_size or set device.drop_remainder=false"
            )
        options = tf.data.Options()
        if is_streamed(x):
            shard = (self.role.workers, self.role.shard) if self.multi_worker else None
            data = x.dataset(y, shuffle_seed=seed, shard=shard, cached=cache)
            if shard is not None:
                logging.getLogger("pipeline").info(
                    "    worker %d reads %d of %d files", shard[1], len(x) // shard[0], len(x)
                )
            options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
        else:
            data = tf.data.Dataset.from_tensor_slices((x, y))
            if cache:
                data = data.cache()
            if seed is not None:
                data = data.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
            options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        data = data.batch(batch, drop_remainder=resolution.drop_remainder)
        return data.with_options(options).prefetch(tf.data.AUTOTUNE)

    def place_model(self, model: Any) -> Any:
        """A freshly built model under the configured precision: a mixed copy with float32 output layers.

        Softmax and the loss lose accuracy in float16; the mixed-precision guide keeps the
        last layer in float32. Under float32 the model is returned as it is.
        """
        precision = self.resolve().precision
        if precision not in MIXED:
            return model
        return with_dtypes(model, hidden=precision, outputs="float32")
