"""`python -m pipeline.doctor [device overrides]`: versions, visible devices, and what a run would use.

Prints the versions of the libraries the pipeline depends on, every device TensorFlow sees
(with GPU compute capability, which decides whether mixed_float16 pays off), the multi-worker
role from `TF_CONFIG`, and what the `device` settings resolve to on this machine, e.g.

    python -m pipeline.doctor                  # what device=auto picks
    python -m pipeline.doctor name=gpu         # fails in one line when no GPU is visible
"""

from __future__ import annotations

import platform
import sys
from importlib import metadata

from pipeline.device.params import DeviceParams
from pipeline.device.setup import DeviceSetup
from pipeline.errors import PipelineError, report
from pipeline.plugin.schema import parse
from pipeline.private_api import untested_versions

PACKAGES = ("tensorflow", "tf-keras", "tensorflow-model-optimization", "ai-edge-litert", "mlflow", "hydra-core", "numpy")


def versions() -> list[tuple[str, str]]:
    """(package, installed version or 'not installed') for every package the pipeline relies on."""
    found = [("python", platform.python_version())]
    for name in PACKAGES:
        try:
            found.append((name, metadata.version(name)))
        except metadata.PackageNotFoundError:
            found.append((name, "not installed"))
    return found


def device_lines() -> list[str]:
    """One line per physical device, with GPU details where TensorFlow reports them."""
    import tensorflow as tf

    lines = []
    for device in tf.config.list_physical_devices():
        details = tf.config.experimental.get_device_details(device) if device.device_type == "GPU" else {}
        extra = ", ".join(f"{key} {value}" for key, value in sorted(details.items()))
        lines.append(f"{device.name.removeprefix('/physical_device:')}" + (f" ({extra})" if extra else ""))
    built = "CUDA" if tf.test.is_built_with_cuda() else "no CUDA"
    lines.append(f"TensorFlow build: {built}")
    return lines


def role_line(setup: DeviceSetup) -> str:
    """This process's multi-worker role, or that it trains alone."""
    role = setup.role
    if role.workers == 1:
        return "not set (one worker)"
    return f"worker {role.index} of {role.workers}" + (" (chief)" if role.is_chief else "")


def parse_overrides(argv: list[str]) -> DeviceParams:
    """`name=gpu strategy=mirrored` (with or without a `device.` prefix) as DeviceParams."""
    import yaml

    values = {}
    for item in argv:
        key, sep, value = item.partition("=")
        if not sep:
            raise PipelineError(f"{item}: expected KEY=VALUE, e.g. name=gpu or device.precision=mixed_float16")
        values[key.removeprefix("device.")] = yaml.safe_load(value)
    return parse(DeviceParams, values, "device")


def main(argv: list[str] | None = None) -> int:
    """Print the report; a device that is asked for but absent ends with one line and status 2."""
    from pipeline.run import quiet

    quiet.install()
    try:
        setup = DeviceSetup(parse_overrides(sys.argv[1:] if argv is None else argv))
        print("versions:")
        for name, version in versions():
            print(f"  {name:<31} {version}")
        for untested in untested_versions():
            print(f"  warning: {untested}: the private APIs in pipeline/private_api.py were checked on another version")
        print("devices:")
        for line in device_lines():
            print(f"  {line}")
        print(f"TF_CONFIG: {role_line(setup)}")
        print(f"resolves to: {setup.resolve().summary()}")
    except PipelineError as error:
        report(error)
    return 0


if __name__ == "__main__":
    sys.exit(main())
