"""Shared fixtures: real configs composed by Hydra, tiny settings, each test in its own tmp_path."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module

from pipeline.cli import with_stage_prefix

os.environ["TF_USE_LEGACY_KERAS"] = "1"

ROOT = Path(__file__).resolve().parents[1]

# Keeps end-to-end runs to seconds: few epochs, few latency repetitions.
TINY = [
    "stages.train.epochs=3",
    "stages.prune.epochs=2",
    "measure.latency_runs=5",
    "measure.warmup_runs=1",
]


def compose_config(tmp_path: Path, *overrides: str):
    """The composed config `python -m pipeline` would see, with outputs under tmp_path."""
    with initialize_config_module(config_module="recipes", version_base="1.3"):
        return compose("config", overrides=[f"outputs={tmp_path / 'outputs'}", *map(with_stage_prefix, overrides)])


def run_cli(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """`python -m pipeline ARGS` in `cwd`, as a user would type it."""
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args],
        cwd=cwd, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture(autouse=True)
def _quiet_tensorflow_logs():
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    logging.getLogger("alembic").setLevel(logging.WARNING)


@pytest.fixture(scope="session")
def keras3_digits(tmp_path_factory):
    """A Keras 3 CNN trained on the digits data, saved four ways, with its float test predictions."""
    from tests import _keras3_models as k3
    from tests._tiny import digits

    data = digits()
    model = k3.train_keras3(k3.digits_cnn(data.input_shape, data.num_classes), data, epochs=25)
    folder = tmp_path_factory.mktemp("keras3")
    files = {kind: k3.save(model, folder, kind) for kind in ("keras", "h5", "export", "tf_saved_model")}
    logits = model.predict(data.x_test, verbose=0)
    return {"data": data, "files": files, "logits": logits, "accuracy": float((logits.argmax(-1) == data.y_test).mean())}
