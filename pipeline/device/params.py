"""The `device` config group and the facts it resolves to, free of TensorFlow.

`DeviceParams` is checked with the rest of the recipe; `WorkerRole` comes from the standard
`TF_CONFIG` variable; `Resolution` is what `pipeline.device.setup.DeviceSetup` found on this machine.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Literal

from pydantic import Field, model_validator

from pipeline.errors import PipelineError
from pipeline.plugin.schema import Params

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
        "auto",
        description="Dtype policy of models a stage builds (output layers stay float32); auto: mixed_bfloat16 on TPU, float32 elsewhere.",
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

    @property
    def shard(self) -> int:
        """This process's place among all `workers` (the chief first), e.g. which shard of the files it reads."""
        if self.task_type == "chief":
            return 0
        return self.index + 1 if self.has_chief else self.index


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

    def summary(self) -> str:
        """One line for the run log and `pipeline.doctor`."""
        return (
            f"device {self.kind} ({', '.join(self.devices)}), strategy {self.strategy} with {self.replicas} "
            f"replica{'s' if self.replicas != 1 else ''}, precision {self.precision}, "
            f"XLA {'on' if self.jit_compile else 'off'}, drop_remainder {'on' if self.drop_remainder else 'off'}"
        )
