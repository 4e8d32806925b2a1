"""Keep a command's terminal output to the product's own lines.

TensorFlow, the TFLite converter, LiteRT and MLflow write start-up and progress notes straight to
file descriptor 2 from C++ (absl logging, the converter's `fully_quantize: ...`, the XNNPACK
delegate) or from child processes, where no Python logging setting reaches them. On a CPU machine
`E0000 ... failed call to cuInit: ... CUDA error` reads like a failure of the run. `install` puts
a filter on descriptor 2: those known notes go to the run's log file (logger `pipeline.native`),
everything else (errors, warnings, tracebacks) reaches the terminal unchanged.
`PIPELINE_VERBOSE=1` turns the filter off.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import sys
import threading

NATIVE_NOTES = re.compile(
    "|".join(
        [
            r"[IWE]\d{4} \d\d:\d\d:[\d.]+\s+\d+ [\w.-]+:\d+\] ",  # absl/glog: I0000 00:00:17.. 123 port.cc:153] ...
            r"WARNING: All log messages before absl::InitializeLog\(\) is called",
            r"To enable the following instructions: ",  # second line of cpu_feature_guard's note
            r"INFO: Created TensorFlow Lite",  # LiteRT's delegate notes
            r"fully_quantize: \d",  # the converter's calibration summary
            r"\d{4}/\d\d/\d\d \d\d:\d\d:\d\d INFO (mlflow|alembic)",  # MLflow creating or migrating a store
            r"INFO  \[alembic\.",
        ]
    )
)
END = b"\x00pipeline.quiet:end"  # written by `_restore`: everything before it has been relayed

log = logging.getLogger("pipeline.native")


def is_native_note(line: str) -> bool:
    """Whether `line` is one of the libraries' routine notes rather than something for the user."""
    return NATIVE_NOTES.match(line) is not None


def install() -> None:
    """Filter this process's descriptor 2 (and its children's) until the interpreter exits."""
    if os.environ.get("PIPELINE_VERBOSE") or not _stderr_is_fd_2():
        return
    sys.stderr.flush()
    terminal = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    relay = threading.Thread(target=_relay, args=(read_end, terminal), name="pipeline.run.quiet", daemon=True)
    relay.start()
    atexit.register(_restore, relay, terminal)


def _stderr_is_fd_2() -> bool:
    try:
        return sys.stderr.fileno() == 2
    except (AttributeError, ValueError, OSError):  # replaced by a test runner or closed
        return False


def _relay(read_end: int, terminal: int) -> None:
    """Pass lines on to the terminal, or to the log when they are native notes, until END."""
    pending = b""
    while True:
        chunk = os.read(read_end, 65536)
        if not chunk:
            break
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            if line.endswith(END):  # after a last line that had no newline of its own
                os.write(terminal, line.removesuffix(END))
                return
            text = line.decode("utf-8", "replace")
            if is_native_note(text):
                log.info("%s", text)
            else:
                os.write(terminal, line + b"\n")
    if pending:
        os.write(terminal, pending)


def _restore(relay: threading.Thread, terminal: int) -> None:
    """Relay what is still queued, then give descriptor 2 back to the terminal."""
    try:
        sys.stderr.flush()
    except (ValueError, OSError):
        pass
    os.write(2, END + b"\n")
    relay.join(timeout=5)
    os.dup2(terminal, 2)
