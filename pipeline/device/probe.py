"""The TensorFlow side of `pipeline.device.setup`: find devices, pick a strategy, create it.

TensorFlow is imported inside the functions, so `pipeline.device.setup` (imported while recipes are
validated) stays free of it; everything here runs only when a run or `pipeline.doctor` asks for
the device.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

from pipeline.device.params import DeviceParams, Kind, Resolution, WorkerRole, tpu_needs_tpu_strategy
from pipeline.errors import PipelineError, quoted

log = logging.getLogger("pipeline")


def physical_devices() -> dict[str, list[str]]:
    """Short names of the devices TensorFlow sees, by kind: {"CPU": ["CPU:0"], "GPU": [...], ...}."""
    import tensorflow as tf

    found: dict[str, list[str]] = {}
    for device in tf.config.list_physical_devices():
        found.setdefault(device.device_type, []).append(device.name.removeprefix("/physical_device:"))
    return found


def resolve(params: DeviceParams, role: WorkerRole) -> Resolution:
    """Resolve `auto` choices against this machine; PipelineError when a named device is absent."""
    if params.cpu_devices > 1:
        split_cpu(params.cpu_devices)
    found = physical_devices()
    available = tuple(name for names in found.values() for name in names)
    kind = choose_kind(params, found, available)
    if kind == "cpu" and found.get("GPU"):
        hide_gpus()
    devices = local_devices(kind, found, params)
    strategy = choose_strategy(params, role, kind, devices)
    if strategy == "one_device":
        devices = devices[:1]
    precision = params.precision if params.precision != "auto" else ("mixed_bfloat16" if kind == "tpu" else "float32")
    jit = params.jit_compile if isinstance(params.jit_compile, bool) else kind == "tpu"
    drop = params.drop_remainder if isinstance(params.drop_remainder, bool) else (kind == "tpu" or jit)
    replicas = len(devices) * (role.workers if strategy == "multi_worker" else 1)
    return Resolution(kind, devices, available, strategy, precision, jit, drop, replicas)


def choose_kind(params: DeviceParams, found: dict[str, list[str]], available: tuple[str, ...]) -> Kind:
    """The device kind asked for, or the best present for `auto`."""
    remote_tpu = bool(params.tpu or os.environ.get("TPU_NAME"))
    if params.name == "auto":
        if found.get("TPU") or remote_tpu:
            return "tpu"
        return "gpu" if found.get("GPU") else "cpu"
    if params.name == "cpu" or found.get(params.name.upper()) or (params.name == "tpu" and remote_tpu):
        return params.name
    raise PipelineError(
        f"device.name={params.name}: no {params.name.upper()} visible; available: {', '.join(available)}; "
        "use device=auto or device=cpu"
    )


def local_devices(kind: Kind, found: dict[str, list[str]], params: DeviceParams) -> tuple[str, ...]:
    """This process's devices of `kind` (logical CPUs when the CPU is split)."""
    if kind == "cpu":
        return tuple(f"CPU:{i}" for i in range(params.cpu_devices))
    return tuple(found.get(kind.upper(), [])) or ("TPU:0",)


def choose_strategy(params: DeviceParams, role: WorkerRole, kind: Kind, devices: tuple[str, ...]) -> str:
    """The strategy asked for (checked against the machine), or the one `auto` implies."""
    if params.strategy == "auto":
        if kind == "tpu":
            return "tpu"
        if role.workers > 1:
            return "multi_worker"
        return "mirrored" if len(devices) > 1 else "one_device"
    if kind == "tpu" and params.strategy != "tpu":
        raise tpu_needs_tpu_strategy(params.strategy)
    if params.strategy == "tpu" and kind != "tpu":
        raise PipelineError(f"device.strategy=tpu: no TPU found (device is {kind}); use device=tpu on a TPU host or device.strategy=auto")
    if params.strategy == "multi_worker" and not os.environ.get("TF_CONFIG"):
        raise PipelineError(
            "device.strategy=multi_worker: TF_CONFIG is not set; start local workers with "
            "`python -m pipeline.launch --workers N ...` or set TF_CONFIG on every host"
        )
    return params.strategy


def split_cpu(count: int) -> None:
    """Present the host CPU as `count` logical devices; only possible before TensorFlow starts."""
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * count)
    except RuntimeError:  # TensorFlow already started in this process: accept an equal split
        if len(tf.config.list_logical_devices("CPU")) != count:
            raise PipelineError(
                f"device.cpu_devices={count}: TensorFlow already started in this process with "
                f"{len(tf.config.list_logical_devices('CPU'))} CPU device(s); run in a fresh process"
            ) from None


def hide_gpus() -> None:
    """Keep TensorFlow off the GPUs when the config asks for the CPU (measurement included)."""
    import tensorflow as tf

    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # already started: ops follow the CPU strategy's placement instead
        log.warning("device: TensorFlow already started; GPUs stay visible, training is placed on the CPU")


def make_strategy(resolution: Resolution, params: DeviceParams) -> tuple[Any, Resolution]:
    """Create the tf.distribute strategy; returns it with the replica count it really has."""
    import tensorflow as tf

    name = resolution.strategy
    if name == "one_device":
        # The default strategy is one device already, and keeps stages' behaviour exactly as without a scope.
        strategy = tf.distribute.get_strategy()
        if resolution.kind == "cpu" and tf.config.list_logical_devices("GPU"):
            strategy = tf.distribute.OneDeviceStrategy("/device:CPU:0")
    elif name == "mirrored":
        cross = tf.distribute.ReductionToOneDevice() if resolution.kind == "cpu" else None
        strategy = tf.distribute.MirroredStrategy([f"/device:{d}" for d in resolution.devices], cross_device_ops=cross)
    elif name == "multi_worker":
        strategy = multi_worker_strategy()
    else:
        strategy = tpu_strategy(params)
    return strategy, dataclasses.replace(resolution, replicas=strategy.num_replicas_in_sync)


def multi_worker_strategy() -> Any:
    """MultiWorkerMirroredStrategy from TF_CONFIG; it must exist before TensorFlow runs any op."""
    import tensorflow as tf

    try:
        return tf.distribute.MultiWorkerMirroredStrategy()
    except (RuntimeError, ValueError) as error:
        raise PipelineError(f"device.strategy=multi_worker: cannot start ({str(error).splitlines()[0]}); check TF_CONFIG") from None


def tpu_strategy(params: DeviceParams) -> Any:
    """Connect to the TPU (local TPU VM, or the one named by device.tpu / TPU_NAME) and return TPUStrategy."""
    import tensorflow as tf

    address = params.tpu or os.environ.get("TPU_NAME") or "local"
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=address)
        if address != "local":
            tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, RuntimeError, tf.errors.OpError) as error:
        reason = str(error).splitlines()[0]
        raise PipelineError(f"device.tpu={quoted(address)}: cannot reach the TPU ({reason}); set device.tpu=NAME") from None
    return tf.distribute.TPUStrategy(resolver)
