"""Faults cost no results: clear errors before work, resumable runs, reproducible models."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.config.recipe import check_recipe
from pipeline.errors import PipelineError
from pipeline.run import interrupts
from pipeline.run.preflight import check_environment
from pipeline.run.runner import RunInfo, run
from tests._runs import TINY, compose_config, run_cli


@pytest.mark.slow
@pytest.mark.parametrize(
    "override, expected",
    [
        ("tracking.uri=http://127.0.0.1:9", "tracking.uri: no MLflow server answers at http://127.0.0.1:9"),
        ("outputs=/proc/forbidden", "outputs: cannot write to /proc/forbidden"),
    ],
)
def test_environment_problems_fail_before_any_work(tmp_path, override, expected):
    started = time.monotonic()
    done = run_cli(override, cwd=tmp_path)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], done.stderr
    assert time.monotonic() - started < 30  # not MLflow's minutes of connection retries
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_a_tracking_store_that_is_not_a_database_fails_before_any_work(tmp_path):
    (tmp_path / "notes.db").write_text("meeting notes\n")
    done = run_cli(f"tracking.uri=sqlite:///{tmp_path}/notes.db", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip() == (
        f"error: tracking.uri: {tmp_path}/notes.db is not an SQLite database; point tracking.uri at the "
        "MLflow store or at a new file, e.g. tracking.uri=sqlite:///outputs/mlflow.db"
    )
    assert (tmp_path / "notes.db").read_text() == "meeting notes\n"
    assert not (tmp_path / "outputs").exists()


def test_an_outputs_path_through_a_file_is_refused(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    settings = check_recipe(compose_config(tmp_path, f"outputs={blocker / 'out'}")).settings
    with pytest.raises(PipelineError, match="outputs: cannot write to"):
        check_environment(settings)


@pytest.mark.slow
def test_same_recipe_and_seed_give_a_byte_identical_tflite(tmp_path):
    digests = []
    for attempt in ("a", "b"):
        cfg = compose_config(tmp_path / attempt, *TINY, "cache=false")
        result = run(cfg, RunInfo(run_dir=tmp_path / attempt / "run"))
        digests.append(hashlib.sha256(result.artifact.path.read_bytes()).hexdigest())
        accuracy = result.rows[-1].metrics["accuracy"]
    assert digests[0] == digests[1]
    cfg = compose_config(tmp_path / "c", *TINY, "cache=false", "seed=7")
    other = run(cfg, RunInfo(run_dir=tmp_path / "c" / "run"))
    assert hashlib.sha256(other.artifact.path.read_bytes()).hexdigest() != digests[0]
    assert 0 < accuracy <= 1


@pytest.mark.slow
def test_a_killed_run_resumes_from_its_last_finished_stage(tmp_path):
    args = ["recipe=mobile_int8", "stages.train.epochs=3", "stages.prune.epochs=40", "measure.latency_runs=3"]
    root = Path(__file__).resolve().parents[1]
    victim = subprocess.Popen(
        [sys.executable, "-m", "pipeline", *args], cwd=tmp_path, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(root)},
        start_new_session=True,
    )
    for line in victim.stdout:  # wait until training is done and pruning has begun
        if "prune epoch 1/" in line:
            break
    os.kill(victim.pid, signal.SIGKILL)  # the pipeline process only: its MLflow writer lives on
    victim.wait(timeout=30)
    assert victim.returncode == -signal.SIGKILL
    assert status_after_exit(f"sqlite:///{tmp_path}/outputs/mlflow.db", victim.pid) == "KILLED"  # the writer closed the run

    done = run_cli(*args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "| train (cached)" in done.stdout  # the finished stage was kept
    assert re.search(r"^\| prune +\| keras", done.stdout, re.MULTILINE)  # the killed stage ran again...
    assert "| prune (cached)" not in done.stdout  # ...and was not taken from a half-written entry
    cache = tmp_path / "outputs" / "cache"
    assert not list(cache.glob(".tmp-*"))  # no staging folder left behind
    assert len(list(cache.glob("*/entry.json"))) == 3  # train, prune, quantize (export is never cached)


@pytest.mark.slow
def test_ctrl_c_ends_the_run_killed_with_one_line(tmp_path):
    victim = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "recipe=mobile_int8", "stages.train.epochs=200"], cwd=tmp_path, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )
    for line in victim.stdout:
        if "train epoch 1/" in line:
            break
    os.killpg(victim.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends: the whole process group
    _, stderr = victim.communicate(timeout=60)
    assert victim.returncode == 130
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1].startswith("interrupted: the MLflow run is marked KILLED")
    assert status_after_exit(f"sqlite:///{tmp_path}/outputs/mlflow.db", victim.pid, seconds=10) == "KILLED"


def status_after_exit(uri: str, group: int, seconds: float = 60) -> str | None:
    """The store's only run's status once every process of `group` (the run's MLflow writer too) has exited.

    Read only then: a second MLflow client opening the SQLite store while the writer still works on it
    may race it over creating the store's tables.
    """
    from mlflow import MlflowClient

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        return None
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("pipeline")
    runs = client.search_runs(experiment_ids=[experiment.experiment_id]) if experiment else []
    return runs[0].info.status if runs else None


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_ctrl_c_swallowed_by_a_finalizer_is_raised_again(monkeypatch):
    class Resource:  # as TensorFlow's tensors and iterators free themselves
        def __del__(self):
            signal.raise_signal(signal.SIGINT)

    previous = signal.getsignal(signal.SIGINT)
    monkeypatch.setattr(interrupts, "_received", False)
    interrupts.install()
    try:
        Resource()  # Python prints "Exception ignored in ... KeyboardInterrupt" and carries on
        with pytest.raises(KeyboardInterrupt):
            interrupts.raise_if_interrupted()
    finally:
        signal.signal(signal.SIGINT, previous)
