"""The MLflow writer process: records every call in order, and fails loudly, never silently."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

from pipeline.config.settings import TrackingParams
from pipeline.errors import PipelineError
from pipeline.tracking.mlflow_run import BackgroundTracker


def tracker_for(folder: Path) -> BackgroundTracker:
    return BackgroundTracker(TrackingParams(uri=f"sqlite:///{folder}/mlflow.db"), folder)


@pytest.mark.slow
def test_calls_land_in_the_run_in_order(tmp_path):
    (tmp_path / "summary.md").write_text("| stage |\n")
    tracker = tracker_for(tmp_path)
    with tracker.start("recipe x", {"sweep": "s1"}):
        tracker.log_params({"stages.prune.final_sparsity": "0.5"})
        tracker.log_stage(0, "train", {"accuracy": 0.5})
        tracker.log_stage(1, "prune", {"accuracy": 0.75})
        tracker.set_tag("cached_stages", "train")
        tracker.log_file(tmp_path / "summary.md")
    run = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db").get_run(tracker.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "recipe x"
    assert run.data.params == {"stages.prune.final_sparsity": "0.5"}
    assert run.data.metrics["accuracy"] == 0.75  # the latest step: the last stage's
    assert run.data.metrics["train.accuracy"] == 0.5
    assert run.data.tags["sweep"] == "s1" and run.data.tags["cached_stages"] == "train"
    assert (Path(run.info.artifact_uri.removeprefix("file://")) / "summary.md").read_text() == "| stage |\n"


def test_a_failing_stage_closes_the_run_as_failed(tmp_path):
    tracker = tracker_for(tmp_path)
    with pytest.raises(ValueError, match="stage bug"), tracker.start("recipe x", {}):
        raise ValueError("stage bug")
    assert MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db").get_run(tracker.run_id).info.status == "FAILED"


def test_a_broken_store_is_one_error_naming_tracking_uri(tmp_path):
    (tmp_path / "mlflow.db").write_bytes(b"not a database" * 100)
    tracker = tracker_for(tmp_path)
    with pytest.raises(PipelineError, match=r"^tracking\.uri=sqlite:///.*mlflow\.db: MLflow could not record the run"):
        with tracker.start("recipe x", {}):
            tracker.log_params({"a": "1"})


def test_the_error_that_stopped_a_run_wins_over_a_broken_store(tmp_path):
    (tmp_path / "mlflow.db").write_bytes(b"not a database" * 100)
    with pytest.raises(ValueError, match="stage bug"), tracker_for(tmp_path).start("recipe x", {}):
        raise ValueError("stage bug")
