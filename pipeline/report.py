"""`python -m pipeline.report`: compare the runs of an experiment or a sweep.

Prints one row per run (the parameters that differ between runs, then the final size, gzip size,
accuracy and latency) and saves Pareto plots (gzip size vs accuracy, latency vs accuracy) as PNG,
which are also logged to every run of a sweep so the MLflow UI shows them.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError, report
from pipeline.summary import human_bytes

FINAL = ("size_bytes", "gzip_bytes", "accuracy", "latency_p50_ms")


@dataclass(frozen=True)
class RunPoint:
    """A finished run's name, parameters and final metrics."""

    run_id: str
    name: str
    params: dict[str, str]
    metrics: dict[str, float]


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of points not dominated when minimising x and maximising y, sorted by x."""
    front = [
        i for i, (x, y) in enumerate(points)
        if not any((ox <= x and oy >= y) and (ox < x or oy > y) for ox, oy in points)
    ]
    return sorted(front, key=lambda i: points[i][0])


def varying(points: Sequence[RunPoint]) -> list[str]:
    """Parameter names whose values differ between runs (what a sweep changed)."""
    names = sorted({name for p in points for name in p.params})
    return [n for n in names if len({p.params.get(n) for p in points}) > 1]


def fetch(client: Any, experiment: str, sweep: str | None) -> tuple[list[RunPoint], str | None]:
    """Finished runs of `experiment` (only `sweep`'s if given; 'latest' picks the newest sweep)."""
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise PipelineError(f"--experiment: no experiment '{experiment}' in this tracking store; run a recipe first")
    runs = client.search_runs([found.experiment_id], "attributes.status = 'FINISHED'", order_by=["attributes.start_time ASC"])
    if sweep == "latest":
        sweeps = [r.data.tags["sweep"] for r in runs if "sweep" in r.data.tags]
        if not sweeps:
            raise PipelineError("--sweep latest: no sweep runs yet; start one with python -m pipeline -m ...")
        sweep = sweeps[-1]
    if sweep:
        runs = [r for r in runs if r.data.tags.get("sweep") == sweep]
    points = [
        RunPoint(r.info.run_id, r.info.run_name or r.info.run_id[:8], dict(r.data.params), dict(r.data.metrics))
        for r in runs if all(m in r.data.metrics for m in FINAL)
    ]
    if not points:
        raise PipelineError(f"--sweep {sweep}: no finished runs with final metrics" if sweep else "no finished runs to report")
    return points, sweep


def table(points: Sequence[RunPoint]) -> str:
    """Markdown table: varying parameters, then final metrics."""
    swept = varying(points)
    header = ["run", *swept, "size", "gzip", "accuracy", "p50 ms"]
    rows = [
        [p.run_id[:8], *(p.params.get(n, "") for n in swept),
         human_bytes(p.metrics["size_bytes"]), human_bytes(p.metrics["gzip_bytes"]),
         f"{p.metrics['accuracy']:.4f}", f"{p.metrics['latency_p50_ms']:.3g}"]
        for p in points
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def plot(points: Sequence[RunPoint], x_metric: str, x_label: str, path: Path) -> Path:
    """Scatter of accuracy against `x_metric` with the Pareto front drawn and runs labelled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    swept = varying(points)
    xy = [(p.metrics[x_metric], p.metrics["accuracy"]) for p in points]
    front = pareto_front(xy)
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    ax.scatter([x for x, _ in xy], [y for _, y in xy], color="tab:blue", label="runs")
    ax.plot([xy[i][0] for i in front], [xy[i][1] for i in front], "o-", color="tab:red", label="Pareto front")
    for point, (x, y) in zip(points, xy):
        label = ", ".join(f"{n.rsplit('.', 1)[-1]}={point.params.get(n)}" for n in swept) or point.name
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel(x_label)
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> None:
    """Print the comparison table, save the Pareto plots, log them to the sweep's runs."""
    parser = argparse.ArgumentParser(prog="python -m pipeline.report", description=__doc__.splitlines()[0])
    parser.add_argument("--tracking-uri", default="sqlite:///outputs/mlflow.db", help="MLflow tracking URI")
    parser.add_argument("--experiment", default="pipeline", help="experiment name (default: pipeline)")
    parser.add_argument("--sweep", help="a sweep id (the `sweep` tag of its runs), or 'latest'")
    parser.add_argument("--out", default="outputs/reports", help="folder for the PNG plots")
    args = parser.parse_args(argv)
    from pipeline import quiet

    quiet.install()
    try:
        run_report(args.tracking_uri, args.experiment, args.sweep, Path(args.out))
    except PipelineError as error:
        report(error)


def run_report(tracking_uri: str, experiment: str, sweep: str | None, out: Path) -> list[Path]:
    """The work behind `main`; returns the written plot files."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    points, sweep = fetch(client, experiment, sweep)
    print(table(points))
    folder = out / (sweep or experiment)
    plots = [
        plot(points, "gzip_bytes", "gzip size of the final model (bytes)", folder / "pareto_size_accuracy.png"),
        plot(points, "latency_p50_ms", "latency p50 at batch 1 (ms)", folder / "pareto_latency_accuracy.png"),
    ]
    if sweep:
        for point in points:
            for path in plots:
                client.log_artifact(point.run_id, str(path), "report")
    print("plots: " + ", ".join(str(p) for p in plots))
    return plots


if __name__ == "__main__":
    main()
