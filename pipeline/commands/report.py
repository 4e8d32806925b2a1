"""`python -m pipeline.report`: compare the runs of an experiment or a sweep.

Prints one row per run (the parameters that differ between runs, then the final size, gzip size,
validation and test accuracy, latency) with the Pareto front marked: the runs no other run beats
on every objective (the sweep's `objectives`, else validation accuracy and gzip size). Saves
Pareto plots (gzip size and latency against validation accuracy) as PNG; for a sweep, logs them
to every run and tags each run `pareto_front=true|false`. `--register NAME` registers the
smallest run within `--within` of the best validation accuracy as a new model version.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.config.objectives import check, direction, for_task
from pipeline.errors import PipelineError, report
from pipeline.measure.tasks import Task, task_named
from pipeline.run.summary import human_bytes
from pipeline.tracking.model_registry import register as register_run

FINAL = ("size_bytes", "gzip_bytes", "latency_p50_ms")  # and the test split's primary metric (`final_metric`)
DEFAULT_OBJECTIVES = ("val_accuracy", "gzip_bytes")


@dataclass(frozen=True)
class RunPoint:
    """A finished run's name, parameters and final metrics."""

    run_id: str
    name: str
    params: dict[str, str]
    metrics: dict[str, float]
    tags: dict[str, str] = field(default_factory=dict)


def dominates(a: Sequence[float], b: Sequence[float], senses: Sequence[str]) -> bool:
    """Whether `a` is at least as good as `b` on every objective and better on one."""
    signed = [(x, y) if sense == "minimize" else (-x, -y) for x, y, sense in zip(a, b, senses)]
    return all(x <= y for x, y in signed) and any(x < y for x, y in signed)


def non_dominated(vectors: Sequence[Sequence[float]], senses: Sequence[str]) -> list[int]:
    """Indices of the vectors no other vector dominates."""
    return [i for i, v in enumerate(vectors) if not any(dominates(o, v, senses) for o in vectors)]


def pareto_front(points: Sequence[tuple[float, float]], y_direction: str = "maximize") -> list[int]:
    """Indices of points not dominated when minimising x and maximising y (minimising it for an error such
    as MAE), sorted by x."""
    return sorted(non_dominated(points, ("minimize", y_direction)), key=lambda i: points[i][0])


def task_of(points: Sequence[RunPoint]) -> Task:
    """The task the runs share (their `task` tag; runs from before tasks are classifiers)."""
    tasks = {p.tags.get("task", "classification") for p in points}
    return task_named(tasks.pop() if len(tasks) == 1 else "classification")


def final_metric(tags: Mapping[str, str]) -> str:
    """The test split's primary metric of a run with `tags`: accuracy, test_mae or test_micro_f1."""
    task = task_named(tags.get("task", "classification"))
    return task.test_key(task.primary)


def front_of(points: Sequence[RunPoint], objectives: Sequence[str]) -> set[str]:
    """Run ids on the Pareto front of `objectives`; runs missing one of them are not candidates."""
    measured = [p for p in points if all(math.isfinite(p.metrics.get(o, math.nan)) for o in objectives)]
    vectors = [[p.metrics[o] for o in objectives] for p in measured]
    return {measured[i].run_id for i in non_dominated(vectors, [direction(o) for o in objectives])}


def sweep_objectives(points: Sequence[RunPoint]) -> tuple[str, ...]:
    """The objectives the runs were searched on (their `objectives` tag) when several, else the default."""
    named = {p.tags.get("objectives", "") for p in points}
    if len(named) == 1 and "," in (only := named.pop()):
        return tuple(only.split(","))
    return DEFAULT_OBJECTIVES


def accuracy_metric(points: Sequence[RunPoint]) -> str:
    """The task's primary validation metric (val_accuracy, val_mae, ...), unless some runs predate it (then the
    plots fall back to the test split's)."""
    task = task_of(points)
    return task.val_primary if all(task.val_primary in p.metrics for p in points) else final_metric(points[0].tags)


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
        RunPoint(r.info.run_id, r.info.run_name or r.info.run_id[:8], dict(r.data.params), dict(r.data.metrics),
                 dict(r.data.tags))
        for r in runs if all(m in r.data.metrics for m in (*FINAL, final_metric(r.data.tags)))
    ]
    if not points:
        raise PipelineError(f"--sweep {sweep}: no finished runs with final metrics" if sweep else "no finished runs to report")
    return points, sweep


def table(points: Sequence[RunPoint], front: Collection[str] = frozenset()) -> str:
    """Markdown table: varying parameters, then final metrics; `front` runs marked with *."""
    swept, task = varying(points), task_of(points)
    header = ["run", *swept, "size", "gzip", f"val {task.title}", f"test {task.title}", "p50 ms", "front"]
    rows = [
        [p.run_id[:8], *(p.params.get(n, "") for n in swept),
         human_bytes(p.metrics["size_bytes"]), human_bytes(p.metrics["gzip_bytes"]),
         f"{p.metrics.get(task.val_primary, math.nan):.4f}", f"{p.metrics[final_metric(p.tags)]:.4f}",
         f"{p.metrics['latency_p50_ms']:.3g}", "*" if p.run_id in front else ""]
        for p in points
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def plot(points: Sequence[RunPoint], x_metric: str, x_label: str, path: Path, scale: float = 1.0) -> Path:
    """Scatter of accuracy against `x_metric` / `scale` with the Pareto front drawn and runs labelled.

    With one swept parameter a label reads `final_sparsity=0.5`; with several it lists the values
    (`16 / 0.5 / 0.9 / int8`) and the title names them in that order.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    swept = varying(points)
    short = [n.rsplit(".", 1)[-1] for n in swept]
    y_metric = accuracy_metric(points)
    xy = [(p.metrics[x_metric] / scale, p.metrics[y_metric]) for p in points]
    finite = [i for i, (_, y) in enumerate(xy) if math.isfinite(y)]  # no validation split: no say
    task = task_of(points)
    front = [finite[i] for i in pareto_front([xy[i] for i in finite], "maximize" if task.higher_is_better else "minimize")]
    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    ax.scatter([x for x, _ in xy], [y for _, y in xy], color="tab:blue", label="runs")
    ax.plot([xy[i][0] for i in front], [xy[i][1] for i in front], "o-", color="tab:red", label="Pareto front")
    labelled = set()
    for point, (x, y) in zip(points, xy):
        values = [str(point.params.get(n)) for n in swept]
        label = f"{short[0]}={values[0]}" if len(swept) == 1 else " / ".join(values) or point.name
        if (x, y, label) not in labelled:  # a repeated trial (same parameters) is labelled once
            labelled.add((x, y, label))
            ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    if len(swept) > 1:
        ax.set_title("labels: " + " / ".join(short), fontsize=9)
    ax.set_xlabel(x_label)
    ax.set_ylabel(f"{'validation' if y_metric.startswith('val_') else 'test'} {task.title}")
    ax.grid(alpha=0.3)
    ax.margins(0.12)  # room for the labels of the outermost points
    ax.legend(loc="best")  # away from the points: the front runs the other way when lower is better
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> None:
    """Print the comparison table, save the Pareto plots, tag and log them to the sweep's runs."""
    parser = argparse.ArgumentParser(prog="python -m pipeline.report", description=__doc__.splitlines()[0])
    parser.add_argument("--tracking-uri", default="sqlite:///outputs/mlflow.db", help="MLflow tracking URI")
    parser.add_argument("--experiment", default="pipeline", help="experiment name (default: pipeline)")
    parser.add_argument("--sweep", help="a sweep id (the `sweep` tag of its runs), or 'latest'")
    parser.add_argument("--out", default="outputs/reports", help="folder for the PNG plots")
    parser.add_argument("--objectives", help="comma-separated metrics of the front (default: the sweep's objectives)")
    parser.add_argument("--register", metavar="NAME", help="register the chosen run's model as a version of NAME")
    parser.add_argument("--within", type=float, default=0.01,
                        help="--register picks among runs this close to the best validation score (0.01: a point; MAE: 1%% more)")
    parser.add_argument("--by", default="gzip_bytes", help="... the one with the least of this metric (gzip_bytes)")
    args = parser.parse_args(argv)
    from pipeline.run import quiet

    quiet.install()
    try:
        run_report(
            args.tracking_uri, args.experiment, args.sweep, Path(args.out),
            objectives=tuple(args.objectives.split(",")) if args.objectives else None,
            register=args.register, within=args.within, by=args.by,
        )
    except PipelineError as error:
        report(error)


def choose(points: Sequence[RunPoint], within: float, by: str) -> RunPoint:
    """The run with the least `by` among those within `within` of the best validation score (the task's
    primary metric: points of accuracy, or for MAE a relative increase)."""
    task = task_of(points)
    name = task.val_primary
    scored = [p for p in points if math.isfinite(p.metrics.get(name, math.nan))]
    if not scored:
        raise PipelineError(f"--register: no run has a validation {task.title}; rerun them with data.val_fraction > 0")
    if by not in scored[0].metrics:
        raise PipelineError(f"--by {by}: not a metric of these runs (valid: {', '.join(sorted(scored[0].metrics))})")
    sign = 1.0 if task.higher_is_better else -1.0
    best = max((p.metrics[name] for p in scored), key=lambda value: sign * value)
    near = [p for p in scored if task.drop(best, p.metrics[name]) <= within + 1e-12]
    return min(near, key=lambda p: (p.metrics[by], -sign * p.metrics[name]))


def run_report(
    tracking_uri: str, experiment: str, sweep: str | None, out: Path, *,
    objectives: tuple[str, ...] | None = None, register: str | None = None, within: float = 0.01,
    by: str = "gzip_bytes",
) -> list[Path]:
    """The work behind `main`; returns the written plot files."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    points, sweep = fetch(client, experiment, sweep)
    task = task_of(points)
    objectives = tuple(for_task(objectives or sweep_objectives(points), task.name))
    check(objectives, "--objectives", task=task.name)
    front = front_of(points, objectives)
    print(table(points, front))
    print(f"front (*): runs no other run beats on all of {', '.join(objectives)}")
    folder = out / (sweep or experiment)
    plots = [
        plot(points, "gzip_bytes", "gzip size of the final model (KiB)", folder / "pareto_size_accuracy.png", 1024),
        plot(points, "latency_p50_ms", "latency p50 at batch 1 (ms)", folder / "pareto_latency_accuracy.png"),
    ]
    if sweep:
        for point in points:
            client.set_tag(point.run_id, "pareto_front", str(point.run_id in front).lower())
            client.set_tag(point.run_id, "pareto_objectives", ",".join(objectives))
            for path in plots:
                client.log_artifact(point.run_id, str(path), "report")
    print("plots: " + ", ".join(str(p) for p in plots))
    if register:
        chosen = choose(points, within, by)
        version = register_run(client, register, chosen.run_id)
        print(
            f"registered run {chosen.run_id[:8]} as {register} version {version.version}: {by} "
            f"{chosen.metrics[by]:.6g}, val {task.title} {chosen.metrics[task.val_primary]:.4f} (within {within} of the best)"
        )
    return plots


if __name__ == "__main__":
    main()
