"""Keras 3 model files in and out, through the bridge process (pipeline.models.keras3_bridge).

A Keras 3 `.keras` or `.h5` file is recognised by the Keras version it records (the archive's
`metadata.json`, the HDF5 file's attributes) before any loader is tried. It is rebuilt as a
tf-keras model in a separate process, checked there on a batch of the data, and the tf-keras
file it writes is what the pipeline loads. Rebuilds are kept for the life of the process, so a
sweep or a model built twice converts once.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from pipeline.errors import PipelineError

log = logging.getLogger("pipeline")

_REBUILT: dict[str, Path] = {}  # (file, sample) digest -> tf-keras file, for this process
SAMPLE_SIZE = 64


def keras_version(path: str | Path) -> str | None:
    """The Keras version a .keras or .h5 file was written by, or None when it records none."""
    path = Path(path)
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                return json.loads(archive.read("metadata.json")).get("keras_version")
        if path.suffix.lower() in (".h5", ".hdf5"):
            import h5py

            with h5py.File(path, "r") as handle:
                version = handle.attrs.get("keras_version")
                return version.decode() if isinstance(version, bytes) else version
    except (OSError, KeyError, ValueError):
        return None  # not readable as such: the tf-keras loader reports what is wrong
    return None


def is_keras3(path: str | Path) -> bool:
    """Whether `path` is a model file written by Keras 3."""
    major = (keras_version(path) or "").split(".")[0]
    return major.isdigit() and int(major) >= 3


def sample_of(data: object) -> np.ndarray:
    """The batch rebuilds are checked on: the first validation examples (training ones if none)."""
    x = data.x_val if len(data.x_val) else data.x_train  # type: ignore[attr-defined]
    return np.asarray(x[:SAMPLE_SIZE], dtype=np.float32)


def to_tf_keras(path: str | Path, sample: np.ndarray | None, safe_mode: bool, where: str) -> Path:
    """A tf-keras copy of the Keras 3 model at `path`, checked on `sample` (random inputs if None)."""
    key = digest(Path(path), sample, safe_mode)
    if key in _REBUILT and _REBUILT[key].exists():
        return _REBUILT[key]
    target = scratch() / f"{key[:16]}.keras"
    checked_on = "a batch of the data" if sample is not None else "random inputs"
    log.info("%s: %s is a Keras 3 model; rebuilding it in tf-keras (in a separate process)", where, path)
    report = bridge(Path(path), target, sample, to_keras3=False, safe_mode=safe_mode, where=where)
    if not report["ok"] and "safe_mode" in report["error"]:
        raise PipelineError(
            f"{where}: {path} runs Python code (a lambda) when loaded, refused in safe mode; "
            "if you trust the file, set model.safe_mode=false"
        )
    if not report["ok"]:
        raise PipelineError(
            f"{where}: cannot rebuild the Keras 3 model {path} in tf-keras: {report['error']}; "
            "use layers and options tf-keras also has, or train the model with tf_keras (TF_USE_LEGACY_KERAS=1)"
        )
    log.info(
        "%s: rebuilt %d layers; predictions on %s (%d examples) match, largest difference %.2g",
        where, report["layers"], checked_on, report["examples"], report["max_abs_diff"],
    )
    _REBUILT[key] = target
    return target


def to_keras3(path: Path, target: Path, sample: np.ndarray, where: str) -> dict:
    """Write the tf-keras model at `path` as a Keras 3 `.keras` file, checked on `sample`; the report."""
    report = bridge(path, target, sample, to_keras3=True, safe_mode=True, where=where)
    if not report["ok"]:
        raise PipelineError(
            f"{where}: cannot write {path.name} as a Keras 3 file: {report['error']}; remove 'keras3' from the formats"
        )
    return report


def bridge(source: Path, target: Path, sample: np.ndarray | None, to_keras3: bool, safe_mode: bool, where: str) -> dict:
    """Run the bridge in its own process; its JSON report."""
    with tempfile.TemporaryDirectory(prefix="pipeline-bridge-") as folder:
        report_path, sample_path = Path(folder) / "report.json", Path(folder) / "sample.npy"
        command = [sys.executable, "-m", "pipeline.models.keras3_bridge", str(source), str(target), str(report_path)]
        if sample is not None:
            np.save(sample_path, sample)
            command += ["--sample", str(sample_path)]
        command += ["--to-keras3"] * to_keras3 + ["--unsafe"] * (not safe_mode)
        env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
        done = subprocess.run(command, capture_output=True, text=True, env=env)
        if not report_path.exists():
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise PipelineError(f"{where}: the process converting {source.name} between Keras versions failed ({last[:200]})")
        return json.loads(report_path.read_text())


def digest(path: Path, sample: np.ndarray | None, safe_mode: bool) -> str:
    """What decides a rebuild: the file's bytes, the sample and the safe-mode setting."""
    hasher = hashlib.sha256(path.read_bytes())
    hasher.update(b"" if sample is None else np.ascontiguousarray(sample).tobytes())
    hasher.update(bytes([safe_mode]))
    return hasher.hexdigest()


def scratch() -> Path:
    """This process's folder for rebuilt models, removed at exit."""
    folder = getattr(scratch, "folder", None)
    if folder is None or not folder.exists():
        folder = Path(tempfile.mkdtemp(prefix="pipeline-keras3-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        scratch.folder = folder  # type: ignore[attr-defined]
    return folder
