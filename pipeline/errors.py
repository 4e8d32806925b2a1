"""The one exception type that reaches users as a message rather than a traceback."""

import os
import sys
from typing import NoReturn


class PipelineError(Exception):
    """A user-facing error: one line that names the key or file and says how to fix it."""


def report(error: PipelineError) -> NoReturn:
    """Print `error: ...` on stderr and exit with status 2; PIPELINE_DEBUG=1 re-raises instead."""
    if os.environ.get("PIPELINE_DEBUG"):
        raise error
    print(f"error: {error}", file=sys.stderr)
    sys.exit(2)
