"""Configs composed as `python -m pipeline` composes them, and the command line run as a user types it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_module

from pipeline.config.arguments import with_stage_prefix

ROOT = Path(__file__).resolve().parents[1]

# A model trained for an epoch or three is not one to judge: runs that test what the stages do,
# not how accurate their output is, opt out of the safety net (tests/test_safety_net.py tests it).
NO_SAFETY_NET = "budget.safety_net=null"

# Keeps end-to-end runs to seconds: few epochs, few latency repetitions.
TINY = [
    "stages.train.epochs=3",
    "stages.prune.epochs=2",
    "measure.latency_runs=5",
    "measure.warmup_runs=1",
    NO_SAFETY_NET,
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


def table_rows(stdout: str) -> dict[str, dict[str, str]]:
    """The run's summary table as {stage: {column title: cell}}, read by its header line."""
    lines = [line for line in stdout.splitlines() if line.startswith("| ")]
    cells = lambda line: [cell.strip() for cell in line.strip().strip("|").split("|")]  # noqa: E731
    header = cells(next(line for line in lines if cells(line)[0] == "stage"))
    return {row[0]: dict(zip(header, row)) for row in map(cells, lines) if row[0] != "stage"}
