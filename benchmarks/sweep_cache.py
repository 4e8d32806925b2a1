"""Wall time of a 3-point sparsity sweep with the stage cache against the same sweep without it.

    python benchmarks/sweep_cache.py [extra overrides...]

Both sweeps run the same recipe with Hydra's basic launcher, each in a fresh outputs folder
(so the cached sweep starts cold), one after the other in this run; the table gives the ratio
of wall times (the target, cached / uncached <= 0.6) and of CPU times (user + system of every
process the sweep waited for), which a machine shared with other work disturbs less.
"""

from __future__ import annotations

import resource
import subprocess
import sys
import tempfile
import time

SWEEP = ["-m", "recipe=mobile_int8", "stages.prune.final_sparsity=0.25,0.5,0.75"]


def cpu_seconds() -> float:
    """User + system CPU of finished child processes so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed_sweep(cache: bool, extra: list[str]) -> tuple[float, float]:
    """Wall and CPU seconds for one sweep in a fresh folder; fails loudly if the sweep fails."""
    with tempfile.TemporaryDirectory() as folder:
        started, cpu = time.perf_counter(), cpu_seconds()
        done = subprocess.run(
            [sys.executable, "-m", "pipeline", *SWEEP, f"cache={str(cache).lower()}", *extra],
            cwd=folder, capture_output=True, text=True,
        )
        seconds = time.perf_counter() - started
        if done.returncode != 0:
            sys.exit(f"sweep with cache={cache} failed:\n{done.stderr[-3000:]}")
        return seconds, cpu_seconds() - cpu


def main() -> None:
    extra = sys.argv[1:]
    uncached, uncached_cpu = timed_sweep(False, extra)
    cached, cached_cpu = timed_sweep(True, extra)
    ratio = cached / uncached
    print(f"3-point sparsity sweep of mobile_int8 {' '.join(extra)}".rstrip())
    print("| sweep        | wall s | CPU s |")
    print("|--------------|--------|-------|")
    print(f"| cache=false  | {uncached:6.1f} | {uncached_cpu:5.1f} |")
    print(f"| cache=true   | {cached:6.1f} | {cached_cpu:5.1f} |")
    print(f"CPU: cached / uncached = {cached_cpu / uncached_cpu:.2f}")
    print(f"wall: cached / uncached = {ratio:.2f} (target <= 0.60): {'PASS' if ratio <= 0.6 else 'FAIL'}")


if __name__ == "__main__":
    main()
