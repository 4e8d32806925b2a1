"""The terminal shows the product's lines; the libraries' native notes go to the log."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from pipeline.run.quiet import is_native_note

# Lines as TensorFlow 2.21, the TFLite converter, LiteRT and MLflow print them on a CPU machine.
NOTES = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1795908876.034996   13429 port.cc:153] oneDNN custom operations are on.",
    "I0000 00:00:1795908876.043949   13429 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used.",
    "E0000 00:00:1795908889.307486   13429 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)",
    "To enable the following instructions: AVX2 AVX512F FMA, in other operations, rebuild TensorFlow with the appropriate compiler flags.",
    "fully_quantize: 0, inference_type: 6, input_inference_type: INT8, output_inference_type: INT8",
    "INFO: Created TensorFlow Lite XNNPACK delegate for CPU.",
    "2026/11/28 23:35:15 INFO mlflow.store.db.utils: Creating initial MLflow database tables...",
]
USER_LINES = [
    "error: stages.prune.final_sparsty: unknown key; did you mean 'final_sparsity'?",
    "Traceback (most recent call last):",
    "F0000 00:00:1795908889.307486   13429 some.cc:1] Check failed: a fatal error stays visible",
    "UserWarning: something the user should see",
]


@pytest.mark.parametrize("line", NOTES)
def test_native_notes_are_recognised(line):
    assert is_native_note(line)


@pytest.mark.parametrize("line", USER_LINES)
def test_other_lines_are_not(line):
    assert not is_native_note(line)


SCRIPT = textwrap.dedent(
    """
    import logging, os, subprocess, sys
    logging.basicConfig(filename=sys.argv[1], level=logging.INFO)
    from pipeline.run import quiet
    quiet.install()
    os.write(2, b"I0000 00:00:1795908876.043949   13429 cudart_stub.cc:31] Could not find cuda drivers\\n")
    print("error: a line for the user", file=sys.stderr)
    subprocess.run([sys.executable, "-c", "import os; os.write(2, b'INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\\\\n')"])
    os.write(2, b"no newline at the end")
    sys.exit(2)
    """
)


def run_script(tmp_path, **env):
    import os

    return subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "run.log")],
        capture_output=True, text=True, timeout=60, env={**os.environ, **env},
    )


def test_filter_keeps_user_lines_and_logs_native_notes_of_the_process_and_its_children(tmp_path):
    done = run_script(tmp_path)
    assert done.returncode == 2
    assert done.stderr == "error: a line for the user\nno newline at the end"
    logged = (tmp_path / "run.log").read_text()
    assert "cudart_stub.cc:31] Could not find cuda drivers" in logged
    assert "XNNPACK delegate" in logged  # written by a child process


def test_verbose_shows_everything(tmp_path):
    done = run_script(tmp_path, PIPELINE_VERBOSE="1")
    assert "cudart_stub" in done.stderr and "XNNPACK" in done.stderr and "error: a line" in done.stderr
