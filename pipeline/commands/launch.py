"""`python -m pipeline.launch --workers N [overrides ...]`: multi-worker training on one host.

Starts N `python -m pipeline` processes on 127.0.0.1, each with the standard `TF_CONFIG` naming
the same cluster and its own task index, so that `device.strategy=auto` becomes
MultiWorkerMirroredStrategy. Worker 0 is the chief: it keeps the run folder, the exported model,
the stage cache and the MLflow run; the others write to temporary folders. Output is streamed
with a `[worker i]` prefix. If any worker fails, the rest are stopped and the launcher exits
with that worker's status. On a real cluster set `TF_CONFIG` on each host instead (README).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from typing import IO

from pipeline.errors import PipelineError, report

GRACE_SECONDS = 10  # how long a stopped worker may take to exit before it is killed


def free_ports(count: int) -> list[int]:
    """`count` distinct free TCP ports on 127.0.0.1 (all held open while choosing, so none repeats)."""
    with ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


def tf_config(addresses: list[str], index: int) -> str:
    """The standard TF_CONFIG of worker `index` in a cluster of `addresses`."""
    return json.dumps({"cluster": {"worker": addresses}, "task": {"type": "worker", "index": index}})


def worker_command(index: int, overrides: list[str], scratch: str) -> list[str]:
    """`python -m pipeline OVERRIDES`; non-chief workers get a throw-away Hydra run folder."""
    extra = [] if index == 0 else [f"hydra.run.dir={scratch}/worker{index}"]
    return [sys.executable, "-m", "pipeline", *overrides, *extra]


def stream(prefix: str, source: IO[str], sink: IO[str]) -> None:
    """Copy `source` to `sink` line by line with `prefix`."""
    for line in source:
        sink.write(f"{prefix}{line}")
        sink.flush()


def start_workers(count: int, overrides: list[str], scratch: str) -> tuple[list[subprocess.Popen], list[threading.Thread]]:
    """Start every worker with its TF_CONFIG and a thread relaying its output."""
    addresses = [f"127.0.0.1:{port}" for port in free_ports(count)]
    workers, relays = [], []
    for index in range(count):
        env = {**os.environ, "TF_CONFIG": tf_config(addresses, index)}
        process = subprocess.Popen(
            worker_command(index, overrides, scratch), env=env, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
        )
        relay = threading.Thread(target=stream, args=(f"[worker {index}] ", process.stdout, sys.stdout), daemon=True)
        relay.start()
        workers.append(process)
        relays.append(relay)
    return workers, relays


def wait_for(workers: list[subprocess.Popen]) -> int:
    """0 when every worker succeeds; else the first failure's status, after stopping the others."""
    while True:
        codes = [w.poll() for w in workers]
        failed = next((c for c in codes if c not in (None, 0)), None)
        if failed is not None:
            stop(workers)
            return failed
        if all(c == 0 for c in codes):
            return 0
        time.sleep(0.2)


def stop(workers: list[subprocess.Popen]) -> None:
    """Terminate the workers still running (their whole process groups), then kill stragglers."""
    running = [w for w in workers if w.poll() is None]
    for worker in running:
        signal_group(worker, signal.SIGTERM)
    deadline = time.monotonic() + GRACE_SECONDS
    for worker in running:
        try:
            worker.wait(max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            signal_group(worker, signal.SIGKILL)
            worker.wait()


def signal_group(worker: subprocess.Popen, signum: int) -> None:
    """Send `signum` to the worker's process group; it may have exited in the meantime."""
    try:
        os.killpg(worker.pid, signum)
    except ProcessLookupError:
        pass


def interrupted(signum: int, frame: object) -> None:
    """SIGTERM handler: stop like Ctrl-C, so that the workers are stopped too."""
    raise KeyboardInterrupt


def parse(argv: list[str]) -> tuple[int, list[str]]:
    """`--workers N` and the overrides handed to every worker unchanged."""
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.launch",
        description="Run one recipe as N multi-worker training processes on 127.0.0.1 (TF_CONFIG per process).",
    )
    parser.add_argument("--workers", type=int, default=2, help="worker processes to start (default 2)")
    parser.epilog = "Every other argument (Hydra overrides, --config-dir) goes to each worker's python -m pipeline."
    args, overrides = parser.parse_known_args(argv)
    if args.workers < 1:
        raise PipelineError(f"--workers={args.workers}: needs at least 1 worker")
    if any(o in ("-m", "--multirun") for o in overrides):
        raise PipelineError("-m: a sweep cannot run under the launcher; launch one run per parameter value")
    return args.workers, overrides


def main(argv: list[str] | None = None) -> int:
    """Launch the workers and wait for them; returns the exit status."""
    try:
        count, overrides = parse(sys.argv[1:] if argv is None else argv)
    except PipelineError as error:
        report(error)
    signal.signal(signal.SIGTERM, interrupted)  # a cancelled launcher must not leave workers behind
    with tempfile.TemporaryDirectory(prefix="pipeline-launch-") as scratch:
        workers, relays = start_workers(count, overrides, scratch)
        try:
            status = wait_for(workers)
        except KeyboardInterrupt:
            stop(workers)
            status = 130
        for relay in relays:
            relay.join(timeout=5)
    if status:
        print(f"launch: a worker failed with status {status}; the other workers were stopped", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
