"""Multi-worker training through `python -m pipeline.launch`: real worker processes on 127.0.0.1."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.commands.launch import free_ports, stop, tf_config, wait_for
from pipeline.device.params import worker_role
from tests._runs import ROOT

TINY_RECIPE = """# @package _global_
description: Two-worker smoke test.
stages:
  train:    {epochs: 2}
  quantize: {mode: int8, calibration_samples: 50}
  export:   {formats: [tflite]}
"""


def launch(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """`python -m pipeline.launch ARGS` in `cwd`."""
    return subprocess.run(
        [sys.executable, "-m", "pipeline.launch", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


@pytest.mark.slow
def test_two_workers_end_with_identical_weights_and_one_export(tmp_path):
    from mlflow import MlflowClient

    recipes = tmp_path / "recipes" / "recipe"
    recipes.mkdir(parents=True)
    (recipes / "two_workers.yaml").write_text(TINY_RECIPE)
    outputs = tmp_path / "outputs"
    done = launch(
        "--workers", "2", "--config-dir", str(tmp_path / "recipes"), "recipe=two_workers", f"outputs={outputs}",
        "measure.latency_runs=3", "measure.warmup_runs=1", cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    log = done.stdout
    assert "[worker 0]" in log and "[worker 1]" in log
    assert re.search(r"\[worker 0\] .*strategy multi_worker with 2 replicas", log)
    digests = dict(re.findall(r"train: worker (\d) weights ([0-9a-f]{16})", log))
    assert set(digests) == {"0", "1"} and digests["0"] == digests["1"]
    exported = [p for p in tmp_path.rglob("model.tflite") if "export" in p.parts]
    assert len(exported) == 1 and outputs in exported[0].parents  # only the chief keeps a run
    assert len(list((outputs / "runs").iterdir())) == 1
    scratch = re.findall(r"outputs go to (\S+) and are not kept", log)
    assert scratch and not any(Path(folder).exists() for folder in scratch)
    client = MlflowClient(f"sqlite:///{outputs}/mlflow.db")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1 and runs[0].data.tags["strategy"] == "multi_worker"  # the chief's run only


@pytest.mark.slow
def test_two_workers_each_stream_their_half_of_the_files(tmp_path):
    from tests._data_files import image_tree

    photos = image_tree(tmp_path / "photos", per_class=20)
    recipes = tmp_path / "recipes" / "recipe"
    recipes.mkdir(parents=True)
    (recipes / "two_workers.yaml").write_text(TINY_RECIPE)
    done = launch(
        "--workers", "2", "--config-dir", str(tmp_path / "recipes"), "recipe=two_workers", f"outputs={tmp_path / 'outputs'}",
        "data=image_folder", f"data.path={photos}", "data.image_size=[16,16]", "data.in_memory_mb=0",
        "measure.latency_runs=3", "measure.warmup_runs=1", cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    log = done.stdout
    assert "streamed from disk in batches" in log
    train_files = int(re.search(r"data: (\d+) train", log).group(1))
    for worker in (0, 1):  # the first dataset each builds is its training input
        reads = re.search(rf"\[worker {worker}\] .*worker {worker} reads (\d+) of (\d+) files", log)
        assert reads and int(reads.group(1)) == train_files // 2 and int(reads.group(2)) == train_files
    digests = dict(re.findall(r"train: worker (\d) weights ([0-9a-f]{16})", log))
    assert set(digests) == {"0", "1"} and digests["0"] == digests["1"]


def test_a_failing_worker_stops_the_others():
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
    failing = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"], start_new_session=True)
    started = time.monotonic()
    assert wait_for([sleeper, failing]) == 3
    assert sleeper.poll() is not None and time.monotonic() - started < 60
    stop([sleeper, failing])  # nothing left running: a no-op


def test_free_ports_are_distinct_and_each_worker_gets_its_role():
    ports = free_ports(4)
    assert len(set(ports)) == 4 and all(1024 <= p < 65536 for p in ports)
    addresses = [f"127.0.0.1:{port}" for port in ports]
    roles = [worker_role({"TF_CONFIG": tf_config(addresses, index)}) for index in range(4)]
    assert [(r.workers, r.index, r.is_chief) for r in roles] == [(4, 0, True), (4, 1, False), (4, 2, False), (4, 3, False)]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--workers", "0"], "error: --workers=0: needs at least 1 worker"),
        (["--workers", "2", "-m", "stages.train.epochs=1,2"], "error: -m: a sweep cannot run under the launcher"),
    ],
)
def test_launcher_mistakes_are_one_line(tmp_path, args, message):
    done = launch(*args, cwd=tmp_path, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().startswith(message) and len(done.stderr.strip().splitlines()) == 1


def test_a_worker_mistake_fails_the_launch(tmp_path):
    done = launch("--workers", "2", "stages.train.epochz=1", f"outputs={tmp_path / 'outputs'}", cwd=tmp_path, timeout=120)
    assert done.returncode == 2
    assert "stages.train.epochz: unknown key" in done.stdout
    assert "a worker failed with status 2" in done.stderr
