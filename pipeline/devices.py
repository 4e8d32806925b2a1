"""Where training runs: the `device` config group and its lazy resolution to a tf.distribute strategy.

`DeviceParams` is checked with the rest of the recipe, without TensorFlow. `DeviceSetup` turns it
into facts (device kind, strategy, precision, XLA) the first time a run needs them, and gives
stages a `scope()` that creates models and optimizers on the right devices, fixed batch sizes,
and tf.data input pipelines. Multi-worker roles come from the standard `TF_CONFIG` variable.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field, model_validator

from pipeline.errors import PipelineError
from pipeline.precision import MIXED, with_dtypes
from pipeline.schema import Params

Kind = Literal["cpu", "gpu", "tpu"]


class DeviceParams(Params):
    """The `device` group: which device, which tf.distribute strategy, precision and XLA."""

    name: Literal["auto", "cpu", "gpu", "tpu"] = Field(
        "auto", description="Device kind to train on; auto: TPU, else GPU, else CPU, whichever is present."
    )
    strategy: Literal["auto", "one_device", "mirrored", "multi_worker", "tpu"] = Field(
        "auto",
        description=(
            "tf.distribute strategy; auto: tpu on a TPU, multi_worker when TF_CONFIG names several tasks, "
            "mirrored with several GPUs (or cpu_devices > 1), else one_device."
        ),
    )
    precision: Literal["auto", "float32", "mixed_float16", "mixed_bfloat16"] = Field(
        "auto", description="Dtype policy of models a stage builds (output layers stay float32); auto: mixed_bfloat16 on TPU, float32 elsewhere."
    )
    jit_compile: bool | Literal["auto"] = Field(
        "auto", description="Compile training steps with XLA; auto: on TPU only (it always compiles)."
    )
    batch_size: Literal["global", "per_replica"] = Field(
        "global",
        description="How stages' batch_size counts: global: examples per step over all replicas; per_replica: per replica.",
    )
    drop_remainder: bool | Literal["auto"] = Field(
        "auto", description="Drop the last partial batch so every step has one shape; auto: on with TPU or XLA."
    )
    cache: bool = Field(True, description="Cache the prepared training examples in the tf.data pipeline after the first epoch.")
    cpu_devices: int = Field(
        1, ge=1, le=64, description="Split the host CPU into this many logical devices (mirrored training on a CPU-only host)."
    )
    tpu: str = Field("", description="TPU name or grpc:// address for TPUClusterResolver; empty: the local TPU.")

    @model_validator(mode="after")
    def _consistent(self) -> DeviceParams:
        if self.strategy == "tpu" and self.name in ("cpu", "gpu"):
            raise PipelineError(f"device.strategy=tpu: needs a TPU but device.name={self.name}; use device=tpu")
        if self.name == "tpu" and self.strategy in ("one_device", "mirrored", "multi_worker"):
            raise tpu_needs_tpu_strategy(self.strategy)
        if self.cpu_devices > 1 and self.name in ("gpu", "tpu"):
            raise PipelineError(f"device.cpu_devices={self.cpu_devices}: splits the CPU only; use device=cpu or remove it")
        return self


def tpu_needs_tpu_strategy(strategy: str) -> PipelineError:
    """The error for a GPU/CPU strategy asked of a TPU."""
    return PipelineError(f"device.strategy={strategy}: a TPU trains under strategy=tpu; use device.strategy=auto")


@dataclass(frozen=True)
class WorkerRole:
    """This process's place in a multi-worker cluster, read from `TF_CONFIG` (one worker without it)."""

    workers: int = 1
    task_type: str = "worker"
    index: int = 0
    has_chief: bool = False

    @property
    def is_chief(self) -> bool:
        """The chief writes outputs, the cache and the MLflow run; the task `chief`, else worker 0."""
        return self.task_type == "chief" or (not self.has_chief and self.task_type == "worker" and self.index == 0)


def worker_role(environ: dict[str, str] | None = None) -> WorkerRole:
    """Parse `TF_CONFIG`; a malformed value is a user mistake reported in one line."""
    raw = (environ if environ is not None else os.environ).get("TF_CONFIG", "")
    if not raw.strip():
        return WorkerRole()
    try:
        config = json.loads(raw)
        cluster, task = config.get("cluster", {}), config.get("task", {})
        workers = sum(len(cluster.get(kind, [])) for kind in ("chief", "worker"))
        return WorkerRole(max(workers, 1), str(task.get("type", "worker")), int(task.get("index", 0)), "chief" in cluster)
    except (ValueError, AttributeError, TypeError) as error:
        raise PipelineError(
            f"TF_CONFIG: not a valid cluster description ({error}); expected "
            '{"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", "index": 0}}'
        ) from None


@dataclass(frozen=True)
class Resolution:
    """What `auto` and the config resolved to on this machine."""

    kind: Kind
    devices: tuple[str, ...]  # local logical devices the strategy uses, e.g. ("CPU:0",)
    available: tuple[str, ...]  # every physical device TensorFlow sees
    strategy: str
    precision: str
    jit_compile: bool
    drop_remainder: bool
    replicas: int

    def describe(self) -> str:
        """One line for the run log and `pipeline.doctor`."""
        return (
            f"device {self.kind} ({', '.join(self.devices)}), strategy {self.strategy} with {self.replicas} "
            f"replica{'s' if self.replicas != 1 else ''}, precision {self.precision}, "
            f"XLA {'on' if self.jit_compile else 'off'}, drop_remainder {'on' if self.drop_remainder else 'off'}"
        )


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
            from pipeline import _device_probe

            self._resolution = _device_probe.resolve(self.params, self.role)
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
            from pipeline import _device_probe

            self._strategy, self._resolution = _device_probe.make_strategy(self.resolve(), self.params)
        return self._strategy

    @property
    def multi_worker(self) -> bool:
        """Whether several processes train together (every worker must run every stage)."""
        return self.resolve().strategy == "multi_worker"

    @contextmanager
    def scope(self) -> Iterator[None]:
        """Models, optimizers and compiles made inside live on the strategy's devices.

        The global Keras dtype policy stays float32: TFMOT's wrappers break under a mixed
        global policy (float16 inputs meet float32 masks), so `prepare` sets policies per layer.
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
        """A tf.data pipeline over in-memory arrays: cached, shuffled when seeded, batched, prefetched.

        Under multi-worker training each worker reads every example and TensorFlow shards the
        batches by position (DATA policy): in-memory arrays have no files to shard by.
        """
        import tensorflow as tf

        resolution = self.resolve()
        batch = self.global_batch(batch_size)
        if resolution.drop_remainder and len(x) < batch:
            raise PipelineError(
                f"device.drop_remainder: {len(x)} examples make no full batch of {batch}; "
                "lower the stage's batch_size or set device.drop_remainder=false"
            )
        data = tf.data.Dataset.from_tensor_slices((x, y))
        if cache:
            data = data.cache()
        if seed is not None:
            data = data.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
        data = data.batch(batch, drop_remainder=resolution.drop_remainder)
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        return data.with_options(options).prefetch(tf.data.AUTOTUNE)

    def prepare(self, model: Any) -> Any:
        """A freshly built model under the configured precision: a mixed copy with float32 output layers.

        Softmax and the loss lose accuracy in float16; the mixed-precision guide keeps the
        last layer in float32. Under float32 the model is returned as it is.
        """
        precision = self.resolve().precision
        if precision not in MIXED:
            return model
        return with_dtypes(model, hidden=precision, outputs="float32")
