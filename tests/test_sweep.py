"""A real sweep: Hydra multirun with the joblib launcher, logged to a real `mlflow server`."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import pytest
from mlflow import MlflowClient

from tests._runs import TINY, run_cli

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """`mlflow server` on 127.0.0.1 with its own SQLite store and artifact folder."""
    folder = tmp_path_factory.mktemp("server")
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{folder}/server.db", "--artifacts-destination", str(folder / "artifacts")],
        stdout=subprocess.DEVNULL, stderr=(folder / "server.log").open("w"),
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.build_opener().open(f"{url}/health", timeout=2) as answer:
                if answer.status == 200:
                    break
        except OSError:
            time.sleep(0.5)
    else:
        server.terminate()
        pytest.fail(f"mlflow server did not answer within 120 s: {(folder / 'server.log').read_text()[-2000:]}")
    yield url
    server.terminate()
    server.wait(timeout=30)


@pytest.fixture(scope="module")
def sweep(mlflow_server, tmp_path_factory):
    """A 2-point sparsity sweep, jobs in parallel, logged to the server."""
    cwd = tmp_path_factory.mktemp("sweep")
    done = run_cli(
        "-m", "recipe=mobile_int8", *TINY, "stages.prune.final_sparsity=0.25,0.5",
        f"tracking.uri={mlflow_server}", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
        cwd=cwd,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    client = MlflowClient(tracking_uri=mlflow_server)
    experiment = client.get_experiment_by_name("pipeline")
    return client, experiment.experiment_id, client.search_runs([experiment.experiment_id])


def test_each_run_carries_the_swept_parameter_and_final_metrics(sweep):
    _, _, runs = sweep
    assert len(runs) == 2
    assert {r.data.params["stages.prune.final_sparsity"] for r in runs} == {"0.25", "0.5"}
    assert len({r.data.tags["sweep"] for r in runs}) == 1
    for mlrun in runs:
        assert mlrun.info.status == "FINISHED"
        assert {"size_bytes", "gzip_bytes", "accuracy", "latency_p50_ms", "prune.sparsity"} <= set(mlrun.data.metrics)
        assert abs(mlrun.data.metrics["sparsity"] - float(mlrun.data.params["stages.prune.final_sparsity"])) <= 0.02


def test_the_shared_training_stage_ran_once(sweep):
    _, _, runs = sweep
    cached = sorted(r.data.tags["cached_stages"] for r in runs)
    assert cached == ["none", "train"]  # parallel jobs: one trained, the other waited and reused


def test_compare_page_renders_in_headless_chromium(sweep, tmp_path, mlflow_server):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("Chromium is not installed (apt-get install chromium); the MLflow compare page is not rendered")
    _, experiment_id, runs = sweep
    query = urllib.parse.urlencode({
        "runs": json.dumps([r.info.run_id for r in runs]),
        "experiments": json.dumps([experiment_id]),
    })
    url = f"{mlflow_server}/#/compare-runs?{query}"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
             "--virtual-time-budget=20000", "--window-size=1400,1000"]
    screenshot = tmp_path / "compare.png"
    subprocess.run([browser, *flags, f"--screenshot={screenshot}", url], capture_output=True, timeout=120)
    assert screenshot.read_bytes().startswith(b"\x89PNG") and screenshot.stat().st_size > 20_000
    dom = subprocess.run([browser, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
    assert "stages.prune.final_sparsity" in dom and "gzip_bytes" in dom
    for mlrun in runs:
        assert mlrun.info.run_name  # every run is named after its recipe and overrides
        assert mlrun.info.run_id in dom or mlrun.info.run_name in dom
