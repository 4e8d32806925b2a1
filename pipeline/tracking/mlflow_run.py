"""MLflow tracking: one run per pipeline execution, written by a helper process.

The flattened recipe goes in as parameters; every stage's measurements go in twice, as
`<stage>.<metric>` (side by side in the compare view) and as `<metric>` with the stage index as
step (so the run's charts follow the model through the pipeline, and the latest value, the final
model's, is what run lists show).

Importing MLflow and opening its store takes about two seconds, as long as a short training
stage. `BackgroundTracker` hands the writing to a child process (`python -m pipeline.tracking.mlflow_run`),
so that cost overlaps TensorFlow's start-up and the stages instead of adding to them. The child
also closes the run as KILLED when the pipeline process dies without saying how the run ended.
The jobs of a sweep that run one after another in one process (Hydra's basic launcher, a joblib
or Ray worker) share one child, so MLflow is imported once per process, not once per job.
"""

from __future__ import annotations

import atexit
import fcntl
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any

from pipeline.config.settings import TrackingParams
from pipeline.errors import PipelineError

log = logging.getLogger(__name__)

_BATCH = 100  # MLflow's limit on parameters per log_batch call


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """`{"a": {"b": 1}}` -> `{"a.b": "1"}`; lists become their string form."""
    flat: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = str(value)
    return flat


class Tracker:
    """Writes one pipeline execution to an MLflow tracking store (in the helper process)."""

    def __init__(self, params: TrackingParams, outputs: Path):
        from mlflow import MlflowClient

        self.params = params
        self.outputs = outputs
        self.run_id: str | None = None
        self.registered: str | None = None  # "NAME version N" once the run's model is registered
        with self.store_lock():  # the client creates (and migrates) a new store right away
            self.client = MlflowClient(tracking_uri=params.uri)

    def experiment_id(self) -> str:
        """The configured experiment's id, created on first use.

        A local store keeps artifacts under `outputs/mlartifacts` rather than MLflow's default
        `./mlruns` in whatever directory the user happens to be in.
        """
        with self.store_lock():
            return self.find_or_create_experiment()

    @contextmanager
    def store_lock(self) -> Iterator[None]:
        """Serialise first use of a local SQLite store across processes.

        MLflow creates and migrates the database on first access; two parallel sweep jobs doing
        that at once fail with `duplicate column name`.
        """
        if not self.params.uri.startswith("sqlite:///"):
            yield
            return
        database = Path(self.params.uri.removeprefix("sqlite:///"))
        database.parent.mkdir(parents=True, exist_ok=True)
        with open(database.with_name(database.name + ".lock"), "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def find_or_create_experiment(self) -> str:
        """Look the experiment up, or create it (tolerating a concurrent creation)."""
        found = self.client.get_experiment_by_name(self.params.experiment)
        if found is not None:
            return found.experiment_id
        location = None
        if self.params.uri.startswith(("sqlite:", "file:")) or "://" not in self.params.uri:
            location = (self.outputs / "mlartifacts").resolve().as_uri()
        try:
            return self.client.create_experiment(self.params.experiment, artifact_location=location)
        except Exception:  # another job created it between our lookup and create
            found = self.client.get_experiment_by_name(self.params.experiment)
            if found is None:
                raise
            return found.experiment_id

    def begin(self, run_name: str, tags: Mapping[str, str]) -> None:
        """Create the run."""
        self.run_id = self.client.create_run(self.experiment_id(), run_name=run_name, tags=dict(tags)).info.run_id

    def current_run(self) -> str:
        """The run `begin` created."""
        assert self.run_id is not None, "begin comes first"
        return self.run_id

    def end(self, status: str) -> None:
        """Mark the run FINISHED, FAILED or KILLED."""
        self.client.set_terminated(self.current_run(), status)

    def log_params(self, params: Mapping[str, str]) -> None:
        """Log parameters in batches that MLflow accepts."""
        from mlflow.entities import Param

        items = [Param(key, value) for key, value in params.items()]
        for start in range(0, len(items), _BATCH):
            self.client.log_batch(self.current_run(), params=items[start : start + _BATCH])

    def log_stage(self, index: int, name: str, metrics: Mapping[str, float]) -> None:
        """One stage's measurements, per stage and as a step of the pipeline-wide series."""
        from mlflow.entities import Metric
        from mlflow.utils.time import get_current_time_millis

        now = get_current_time_millis()
        batch = [Metric(f"{name}.{key}", float(value), now, 0) for key, value in metrics.items()]
        batch += [Metric(key, float(value), now, index) for key, value in metrics.items()]
        self.client.log_batch(self.current_run(), metrics=batch)

    def log_metrics(self, metrics: Mapping[str, float]) -> None:
        """Plain metrics, no step (numbers a stage reports about its own work)."""
        if metrics:
            from mlflow.entities import Metric
            from mlflow.utils.time import get_current_time_millis

            now = get_current_time_millis()
            self.client.log_batch(self.current_run(), metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()])

    def set_tag(self, key: str, value: str) -> None:
        """A tag decided during the run (e.g. which stages came from the cache)."""
        self.client.set_tag(self.current_run(), key, value)

    def log_text(self, text: str, artifact_file: str) -> None:
        """A text artifact, such as the resolved recipe."""
        self.client.log_text(self.current_run(), text, artifact_file)

    def log_file(self, path: str | Path, artifact_path: str | None = None) -> None:
        """A file or directory as run artifacts."""
        if Path(path).is_dir():
            self.client.log_artifacts(self.current_run(), str(path), artifact_path)
        else:
            self.client.log_artifact(self.current_run(), str(path), artifact_path)

    def register(self, name: str) -> None:
        """The run's shipped model (its `model/` artifacts) as a new version of registered model `name`."""
        from pipeline.tracking.model_registry import register

        version = register(self.client, name, self.current_run())
        self.registered = f"{name} version {version.version}"


class BackgroundTracker:
    """`Tracker`'s interface; a child process does the writing, in the order of the calls.

    Calls return at once. `end` waits for the child to write everything and reports a failure of
    the tracking store as a PipelineError, after the run's own files are written.
    """

    _shared: subprocess.Popen | None = None  # the child, kept for the next run in this process

    def __init__(self, params: TrackingParams, outputs: Path):
        self.uri = params.uri
        self.run_id: str | None = None
        self.registered: str | None = None
        self.process = self.writer()
        self.send("open", params.model_dump(), str(outputs))

    @classmethod
    def writer(cls) -> subprocess.Popen:
        """The shared child, started when there is none or the last one stopped."""
        if cls._shared is None or cls._shared.poll() is not None:
            # The child imports this package from where the parent did, installed or not.
            root = str(Path(__file__).resolve().parents[2])
            env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
            cls._shared = subprocess.Popen(
                [sys.executable, "-m", "pipeline.tracking.mlflow_run"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                text=True, env=env,
            )
            atexit.register(cls.close, cls._shared)
        return cls._shared

    @staticmethod
    def close(process: subprocess.Popen) -> None:
        """Let an idle child go at exit (it ends when its input closes) instead of leaving it orphaned."""
        with suppress(BrokenPipeError, ValueError, OSError):
            pipes(process)[0].close()
        with suppress(subprocess.TimeoutExpired):
            process.wait(timeout=10)

    def send(self, call: str, *args: Any) -> None:
        """Queue one call for the child; a child that already failed says why in `end`."""
        with suppress(BrokenPipeError, ValueError):  # ValueError: the pipe is already closed
            pipes(self.process)[0].write(json.dumps([call, *args], default=str) + "\n")
            pipes(self.process)[0].flush()

    @contextmanager
    def start(self, run_name: str, tags: Mapping[str, str]) -> Iterator[BackgroundTracker]:
        """An MLflow run that ends FINISHED, FAILED on an error, or KILLED on Ctrl-C."""
        self.send("begin", run_name, dict(tags))
        status = "FAILED"
        try:
            yield self
            status = "FINISHED"
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        finally:
            if status == "FINISHED":
                self.end(status)
            else:
                with suppress(PipelineError):  # the error that stopped the run is the one to report
                    self.end(status)

    def end(self, status: str) -> None:
        """Close the run and wait until every queued call is written."""
        self.send("end", status)
        try:
            reply = pipes(self.process)[1].readline()
        except ValueError:  # its pipe was closed after an earlier failure
            reply = ""
        outcome = json.loads(reply) if reply.strip() else {"error": "its writer stopped"}
        if "error" in outcome or status == "KILLED":  # a Ctrl-C'd process is on its way out
            self.stop()
        self.run_id = outcome.get("run_id")
        self.registered = outcome.get("registered")
        if "error" in outcome:
            raise PipelineError(
                f"tracking.uri={self.uri}: MLflow could not record the run ({outcome['error']}); "
                "the run's files are in its run folder; check the store or the server and rerun"
            )

    def stop(self) -> None:
        """End the child (it exits when its input closes); the next run starts a new one."""
        self.close(self.process)
        pipes(self.process)[1].close()
        if BackgroundTracker._shared is self.process:
            BackgroundTracker._shared = None

    def __getattr__(self, call: str) -> Any:
        # log_params, log_stage, log_metrics, set_tag, log_text, log_file, register: forwarded as they are.
        if call.startswith("log_") or call in ("set_tag", "register"):
            return lambda *args: self.send(call, *args)
        raise AttributeError(call)


def serve(calls: Iterator[str], reply: Any) -> None:
    """The child's side: one run after another, each answered with its run id or its error."""
    while serve_run(calls, reply):
        pass


def serve_run(calls: Iterator[str], reply: Any) -> bool:
    """Apply one run's queued calls (`open` ... `end`) to a `Tracker`; False when the input ended.

    After a failed call the run's remaining calls are skipped up to its `end`. If the input ends
    before `end` (the pipeline process died), the run is closed as KILLED.
    """
    tracker: Tracker | None = None
    status, outcome, ended = "KILLED", {}, False
    for line in calls:
        call, *args = json.loads(line)
        if call == "end":
            status, ended = args[0], True
            break
        if "error" in outcome:
            continue
        try:
            if call == "open":
                tracker = Tracker(TrackingParams(**args[0]), Path(args[1]))
            else:
                getattr(tracker, call)(*args)
        except Exception as error:  # noqa: BLE001 - reported to the pipeline process, which fails the run with it
            outcome = {"error": f"{type(error).__name__}: {error}".splitlines()[0]}
    if tracker is None and not ended:
        return False  # the input ended between runs
    if "error" in outcome:
        status = "FAILED"
    if tracker is not None and tracker.run_id is not None:
        try:
            tracker.end(status)
        except Exception as error:  # noqa: BLE001 - as above: the pipeline process reports it
            outcome.setdefault("error", f"{type(error).__name__}: {error}".splitlines()[0])
        outcome["run_id"] = tracker.run_id
        if tracker.registered:
            outcome["registered"] = tracker.registered
    reply.write(json.dumps(outcome) + "\n")
    reply.flush()
    return ended


class NoTracking:
    """Stands in for `BackgroundTracker` on the non-chief workers of a multi-worker run: records nothing."""

    run_id = "(recorded by the chief)"
    registered = None

    @contextmanager
    def start(self, run_name: str, tags: Mapping[str, str]) -> Iterator[NoTracking]:
        """No MLflow run; the chief records the run for every worker."""
        yield self

    def __getattr__(self, name: str) -> Any:
        # log_params, log_stage, set_tag, log_text, log_file: accepted and dropped.
        return lambda *args, **kwargs: None


def pipes(process: subprocess.Popen) -> tuple[IO[str], IO[str]]:
    """The writer child's input and output (`BackgroundTracker.writer` opens both as pipes)."""
    assert process.stdin is not None and process.stdout is not None
    return process.stdin, process.stdout


if __name__ == "__main__":
    # Ctrl-C reaches the whole process group; the pipeline process decides how the run ends.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    reply = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # anything MLflow prints goes to stderr
    serve(sys.stdin, reply)
    # Everything is written and committed; the interpreter's teardown (half a second with MLflow
    # and SQLAlchemy loaded) would only keep the pipeline waiting.
    os._exit(0)
