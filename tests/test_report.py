"""`python -m pipeline.report` on a real MLflow store: comparison table and Pareto plots."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

from pipeline.commands.report import pareto_front, run_report
from pipeline.errors import PipelineError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_pareto_front_keeps_only_undominated_points():
    #          small+bad   big+good    dominated   tie on size, better
    points = [(10, 0.80), (40, 0.99), (30, 0.81), (10, 0.82)]
    assert pareto_front(points) == [3, 1]


def log_sweep(uri: str, sweep: str, sparsities: list[float], artifacts: Path) -> list[str]:
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("pipeline", artifact_location=artifacts.as_uri())
    ids = []
    for sparsity in sparsities:
        run = client.create_run(experiment, run_name=f"mobile_int8 sparsity={sparsity}", tags={"sweep": sweep})
        client.log_param(run.info.run_id, "stages.prune.final_sparsity", sparsity)
        client.log_param(run.info.run_id, "seed", 42)
        for key, value in {"size_bytes": 45000, "gzip_bytes": 40000 * (1 - sparsity), "accuracy": 0.99 - sparsity / 10,
                           "latency_p50_ms": 0.004}.items():
            client.log_metric(run.info.run_id, key, value)
        client.set_terminated(run.info.run_id)
        ids.append(run.info.run_id)
    return ids


def test_report_prints_the_sweep_and_logs_plots(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    ids = log_sweep(uri, "sweep-1", [0.25, 0.5, 0.75], tmp_path / "artifacts")
    plots = run_report(uri, "pipeline", "latest", tmp_path / "reports")
    out = capsys.readouterr().out
    assert "stages.prune.final_sparsity" in out and "seed" not in out  # only what varies
    rows = [line for line in out.splitlines() if line.startswith("| ") and "accuracy" not in line]
    assert len(rows) == 3 and "| 0.25 " in rows[0] and "0.9650" in rows[0]
    assert [p.name for p in plots] == ["pareto_size_accuracy.png", "pareto_latency_accuracy.png"]
    assert all(p.read_bytes().startswith(PNG_MAGIC) and p.parent.name == "sweep-1" for p in plots)
    logged = {a.path for a in MlflowClient(tracking_uri=uri).list_artifacts(ids[0], "report")}
    assert logged == {"report/pareto_size_accuracy.png", "report/pareto_latency_accuracy.png"}


def test_report_names_what_is_missing(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    with pytest.raises(PipelineError, match="--experiment: no experiment 'pipeline'"):
        run_report(uri, "pipeline", None, tmp_path)
    log_sweep(uri, "sweep-1", [0.5], tmp_path / "artifacts")
    with pytest.raises(PipelineError, match="--sweep other: no finished runs"):
        run_report(uri, "pipeline", "other", tmp_path)


def log_search(uri: str, artifacts: Path, runs: dict[str, tuple[float, float]]) -> dict[str, str]:
    """Runs of one sweep searched on validation accuracy and gzip size, each with a model file."""
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("pipeline", artifact_location=artifacts.as_uri())
    model = artifacts.parent / "model.tflite"
    model.write_bytes(b"TFL3" * 10)
    ids = {}
    for name, (val_accuracy, gzip_bytes) in runs.items():
        run = client.create_run(experiment, run_name=name, tags={"sweep": "s", "objectives": "val_accuracy,gzip_bytes"})
        client.log_param(run.info.run_id, "stages.prune.final_sparsity", name)
        for key, value in {"size_bytes": 45000, "gzip_bytes": gzip_bytes, "accuracy": 0.5,
                           "val_accuracy": val_accuracy, "latency_p50_ms": 0.004}.items():
            client.log_metric(run.info.run_id, key, value)
        client.log_artifact(run.info.run_id, str(model), "model")
        client.set_terminated(run.info.run_id)
        ids[name] = run.info.run_id
    return ids


def test_the_front_follows_the_sweeps_objectives_and_is_tagged(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    # "worse" is bigger and less accurate than "best"; the test accuracy (0.5 for all) plays no part.
    ids = log_search(uri, tmp_path / "artifacts", {"best": (0.95, 30000), "small": (0.90, 10000), "worse": (0.94, 31000)})
    run_report(uri, "pipeline", "latest", tmp_path / "reports")
    rows = {line.split("|")[2].strip(): line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")}
    assert rows["best"].rstrip().endswith("| *     |") and rows["small"].rstrip().endswith("| *     |")
    assert rows["worse"].rstrip().endswith("|       |")
    client = MlflowClient(tracking_uri=uri)
    tags = {name: client.get_run(run_id).data.tags for name, run_id in ids.items()}
    assert [tags[n]["pareto_front"] for n in ("best", "small", "worse")] == ["true", "true", "false"]
    assert tags["best"]["pareto_objectives"] == "val_accuracy,gzip_bytes"


@pytest.mark.slow
def test_register_picks_the_smallest_run_within_a_point_of_the_best(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    ids = log_search(uri, tmp_path / "artifacts", {"best": (0.95, 30000), "near": (0.945, 20000), "far": (0.93, 10000)})
    run_report(uri, "pipeline", "latest", tmp_path / "reports", register="digits", within=0.01)
    assert f"registered run {ids['near'][:8]} as digits version 1" in capsys.readouterr().out
    version = MlflowClient(tracking_uri=uri).get_model_version("digits", "1")
    assert version.run_id == ids["near"] and version.tags["gzip_bytes"] == "20000"
    assert version.tags["val_accuracy"] == "0.945" and version.source == f"runs:/{ids['near']}/model"
    run_report(uri, "pipeline", "latest", tmp_path / "reports", register="digits", within=0.001)
    assert MlflowClient(tracking_uri=uri).get_model_version("digits", "2").run_id == ids["best"]
