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

pytestmark = pytest.mark.slow  # every test here runs Hydra multirun sweeps of the command line


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


def render(url: str, folder) -> tuple[bytes, str]:
    """A screenshot and the DOM of `url` as headless Chromium renders them (skips without Chromium)."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("Chromium is not installed (apt-get install chromium); the MLflow page is not rendered")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={folder / 'profile'}",
             "--virtual-time-budget=20000", "--window-size=1400,1000"]
    screenshot = folder / "page.png"
    subprocess.run([browser, *flags, f"--screenshot={screenshot}", url], capture_output=True, timeout=120)
    dom = subprocess.run([browser, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
    return screenshot.read_bytes(), dom


def test_compare_page_renders_in_headless_chromium(sweep, tmp_path, mlflow_server):
    _, experiment_id, runs = sweep
    query = urllib.parse.urlencode({
        "runs": json.dumps([r.info.run_id for r in runs]),
        "experiments": json.dumps([experiment_id]),
    })
    png, dom = render(f"{mlflow_server}/#/compare-runs?{query}", tmp_path)
    assert png.startswith(b"\x89PNG") and len(png) > 20_000
    assert "stages.prune.final_sparsity" in dom and "gzip_bytes" in dom
    for mlrun in runs:
        assert mlrun.info.run_name  # every run is named after its recipe and overrides
        assert mlrun.info.run_id in dom or mlrun.info.run_name in dom


@pytest.fixture(scope="module")
def registered(sweep, mlflow_server, tmp_path_factory):
    """The report registers the sweep's smallest run within a point of the best validation accuracy."""
    client, _, runs = sweep
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.report", "--tracking-uri", mlflow_server, "--sweep", "latest",
         "--register", "digits-int8", "--within", "0.01"],
        cwd=tmp_path_factory.mktemp("report"), capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return client, runs, client.get_model_version("digits-int8", "1"), done.stdout


def test_report_registers_the_chosen_run_on_the_server(registered):
    client, runs, version, stdout = registered
    best = max(r.data.metrics["val_accuracy"] for r in runs)
    near = [r for r in runs if r.data.metrics["val_accuracy"] >= best - 0.01]
    chosen = min(near, key=lambda r: r.data.metrics["gzip_bytes"])
    assert version.run_id == chosen.info.run_id and version.status == "READY"
    assert f"registered run {chosen.info.run_id[:8]} as digits-int8 version 1" in stdout
    assert float(version.tags["gzip_bytes"]) == chosen.data.metrics["gzip_bytes"]
    assert version.tags["recipe"] == "mobile_int8" and "final_sparsity" in version.tags["overrides"]
    files = {a.path for a in client.list_artifacts(chosen.info.run_id, "model")}
    assert "model/model.tflite" in files  # what the version's source points at


def test_registered_model_page_renders_in_headless_chromium(registered, tmp_path, mlflow_server):
    _, _, version, _ = registered
    png, dom = render(f"{mlflow_server}/#/models/digits-int8/versions/1", tmp_path)
    assert png.startswith(b"\x89PNG") and len(png) > 20_000
    assert "digits-int8" in dom and "gzip_bytes" in dom and version.tags["gzip_bytes"] in dom
