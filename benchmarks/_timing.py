"""Timing a `python -m pipeline` sweep as a user starts it: wall and CPU seconds in a fresh folder."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import time


def cpu_seconds() -> float:
    """User + system CPU of the finished child processes so far (what a sweep's processes used)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed_sweep(arguments: list[str], label: str) -> tuple[float, float]:
    """Wall and CPU seconds of `python -m pipeline ARGUMENTS` in a fresh folder (cold cache, new
    MLflow store); stops the benchmark with the error output if the sweep fails."""
    with tempfile.TemporaryDirectory() as folder:
        started, cpu = time.perf_counter(), cpu_seconds()
        done = subprocess.run([sys.executable, "-m", "pipeline", *arguments], cwd=folder, capture_output=True,
                              text=True, env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
        seconds = time.perf_counter() - started
        if done.returncode != 0:
            sys.exit(f"sweep with {label} failed:\n{done.stderr[-3000:]}")
        return seconds, cpu_seconds() - cpu
