"""What the runner costs: `python -m pipeline recipe=mobile_int8` against the same work by hand.

    python benchmarks/overhead.py [--repeats 3]

Runs the hand-written script (benchmarks/handwritten_mobile_int8.py: same data, model, epochs and
TensorFlow/TFMOT calls) and the pipeline (cache off, so it trains) alternately, each as a fresh
process as a user would start it, and prints the median wall times and their ratio
(target <= 1.10). Also times start-up: `python -m pipeline --help` and a validation error
(target < 2 s each).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
RECIPE = yaml.safe_load((HERE.parent / "recipes" / "recipe" / "mobile_int8.yaml").read_text())


def timed(command: list[str], cwd: str, expect_ok: bool = True) -> float:
    """Wall seconds of one fresh process."""
    started = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if expect_ok and done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    stages = RECIPE["stages"]
    handwritten = [
        sys.executable, str(HERE / "handwritten_mobile_int8.py"),
        "--train-epochs", str(stages["train"]["epochs"]), "--prune-epochs", str(stages["prune"]["epochs"]),
        "--sparsity", str(stages["prune"]["final_sparsity"]),
    ]
    pipeline = [sys.executable, "-m", "pipeline", "recipe=mobile_int8", "cache=false"]
    times: dict[str, list[float]] = {"hand-written script": [], "python -m pipeline": []}
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(args.repeats):
            times["hand-written script"].append(timed(handwritten, folder))
            times["python -m pipeline"].append(timed(pipeline, folder))
        help_s = statistics.median(timed([sys.executable, "-m", "pipeline", "--help"], folder) for _ in range(5))
        error_s = statistics.median(
            timed([sys.executable, "-m", "pipeline", "stages.prune.final_sparsity=1.5"], folder, expect_ok=False)
            for _ in range(5)
        )
    medians = {name: statistics.median(values) for name, values in times.items()}
    ratio = medians["python -m pipeline"] / medians["hand-written script"]
    print(f"mobile_int8 (train {stages['train']['epochs']} epochs, prune {stages['prune']['epochs']} epochs, int8), "
          f"median of {args.repeats}")
    print("| what                          | wall s |")
    print("|-------------------------------|--------|")
    for name, value in medians.items():
        print(f"| {name:<29} | {value:6.2f} |")
    print(f"| python -m pipeline --help     | {help_s:6.2f} |")
    print(f"| validation error              | {error_s:6.2f} |")
    print(f"runner overhead: pipeline / hand-written = {ratio:.3f} (target <= 1.10): {'PASS' if ratio <= 1.10 else 'FAIL'}")
    print(f"start-up: --help {help_s:.2f} s, validation error {error_s:.2f} s (target < 2 s): "
          f"{'PASS' if max(help_s, error_s) < 2 else 'FAIL'}")


if __name__ == "__main__":
    main()
