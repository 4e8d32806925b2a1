"""A multi-objective Optuna search with the shipped recipe, then its report: Pareto table and plots.

    python benchmarks/search.py --mnist DIR [--trials 12] [--outputs DIR] [--plots DIR] [overrides...]

Runs `python -m pipeline -m recipe=search_int8 data=idx data.path=DIR hydra.sweeper.n_trials=N`
(validation accuracy against gzip size; width, sparsity, clusters and quantization mode searched;
trials share the stage cache), then `python -m pipeline.report --sweep latest` on its store. DIR
holds MNIST IDX files (`t10k-images-idx3-ubyte.gz`, `t10k-labels-idx1-ubyte.gz`). Prints the
report, the wall time and how many trials reused each stage; `--plots` copies the PNGs there.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """Run `command` in `cwd`; stop the benchmark with its error output if it fails."""
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return done


def reuse(outputs: Path) -> str:
    """How many trials took each stage from the cache (the `cached_stages` tag of the runs)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{outputs}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("pipeline").experiment_id])
    counts = collections.Counter(s for r in runs for s in r.data.tags.get("cached_stages", "none").split(","))
    statuses = collections.Counter(r.info.status for r in runs)
    return f"runs: {dict(statuses)}; stages reused from the cache: {dict(counts)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mnist", required=True, help="folder with the MNIST IDX files")
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--outputs", help="keep the outputs here (default: a temporary folder)")
    parser.add_argument("--plots", help="copy the Pareto plots to this folder")
    args, overrides = parser.parse_known_args()
    folder = Path(args.outputs or tempfile.mkdtemp(prefix="search-bench-")).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    run([sys.executable, "-m", "pipeline", "-m", "recipe=search_int8", "data=idx", f"data.path={Path(args.mnist).resolve()}",
         f"hydra.sweeper.n_trials={args.trials}", *overrides], folder)
    seconds = time.perf_counter() - started
    report = run([sys.executable, "-m", "pipeline.report", "--sweep", "latest", "--out", "outputs/reports"], folder)
    print(f"{args.trials}-trial search of recipe=search_int8 on {args.mnist} {' '.join(overrides)}".rstrip())
    print(report.stdout.rstrip())
    print(f"search wall time: {seconds:.0f} s; {reuse(folder / 'outputs')}")
    (results,) = (folder / "outputs" / "multirun").glob("*/optimization_results.yaml")
    print(f"Optuna's Pareto solutions ({results}):\n{results.read_text()}")
    if args.plots:
        Path(args.plots).mkdir(parents=True, exist_ok=True)
        for png in (folder / "outputs" / "reports").rglob("*.png"):
            shutil.copy(png, Path(args.plots) / f"search_mnist_{png.name.removeprefix('pareto_')}")


if __name__ == "__main__":
    main()
