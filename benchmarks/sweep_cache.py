"""Wall time of a 3-point sparsity sweep with the stage cache against the same sweep without it.

    python benchmarks/sweep_cache.py [extra overrides...]

Both sweeps run the same recipe with Hydra's basic launcher, each in a fresh outputs folder
(so the cached sweep starts cold), one after the other in this run; the table gives the ratio
of wall times (the target, cached / uncached <= 0.6) and of CPU times (user + system of every
process the sweep waited for), which a machine shared with other work disturbs less.
"""

from __future__ import annotations

import sys

from _timing import timed_sweep

SWEEP = ["-m", "recipe=mobile_int8", "stages.prune.final_sparsity=0.25,0.5,0.75"]


def main() -> None:
    extra = sys.argv[1:]
    uncached, uncached_cpu = timed_sweep([*SWEEP, "cache=false", *extra], "cache=false")
    cached, cached_cpu = timed_sweep([*SWEEP, "cache=true", *extra], "cache=true")
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
