"""Wall time of one 4-job sweep under Hydra's basic, joblib (2 jobs) and Ray launchers.

    python benchmarks/launchers.py [overrides...]

The same sweep (`recipe=mobile_int8 stages.prune.final_sparsity=0.3,0.45,0.6,0.75`) runs once per
launcher, each in a fresh outputs folder (cold stage cache, new MLflow store), one after the other
in this run. Parallel jobs share the cache: the first job to need the trained model trains it and
the others wait for it. Launchers that are not installed are reported as such.
"""

from __future__ import annotations

import sys

from _timing import timed_sweep

from pipeline.config.arguments import installed

SWEEP = ["-m", "recipe=mobile_int8", "stages.prune.final_sparsity=0.3,0.45,0.6,0.75"]
# Ray's worker processes belong to its raylet, not to the sweep's process: their CPU time is not counted.
CPU_NOT_COUNTED = {"ray, local cluster, 2 CPUs"}
LAUNCHERS = {
    "basic (one process)": (None, []),
    "joblib, 2 jobs": ("hydra_plugins.hydra_joblib_launcher", ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]),
    "ray, local cluster, 2 CPUs": ("hydra_plugins.hydra_ray_launcher", [
        "hydra/launcher=ray", "+hydra.launcher.ray.init.num_cpus=2", "+hydra.launcher.ray.init.include_dashboard=false",
    ]),
}


def main() -> None:
    extra = sys.argv[1:]
    rows = []
    for name, (module, launcher) in LAUNCHERS.items():
        if module and not installed(module):
            rows.append((name, "not installed", ""))
            continue
        wall, cpu = timed_sweep([*SWEEP, *launcher, *extra], name)
        rows.append((name, f"{wall:.1f}", "not counted" if name in CPU_NOT_COUNTED else f"{cpu:.1f}"))
    print(f"4-job sweep: {' '.join(SWEEP[1:])} {' '.join(extra)}".rstrip())
    print("| launcher                   | wall s | CPU s (all processes) |")
    print("|----------------------------|--------|-----------------------|")
    for name, wall, cpu in rows:
        print(f"| {name:<26} | {wall:>6} | {cpu:>21} |")


if __name__ == "__main__":
    main()
