"""The one exception type that reaches users as a message rather than a traceback."""

import os
import sys
from typing import Any, NoReturn


class PipelineError(Exception):
    """A user-facing error: one line that names the key or file and says how to fix it."""


def quoted(value: Any, limit: int = 60) -> str:
    """`value` as an error message quotes it: its repr, cut to about `limit` characters with an ellipsis.

    Errors quote what the user gave (a CSV field, a config value); a whole 2,000-character text
    field would bury the message, and the start of the value is enough to find it.
    """
    shown = repr(value)
    if len(shown) <= limit:
        return shown
    closing = shown[-1] if isinstance(value, str) else ""  # a cut text still reads as one quoted value
    return shown[: limit - 1 - len(closing)] + "…" + closing


def report(error: PipelineError) -> NoReturn:
    """Print `error: ...` on stderr and exit with status 2; PIPELINE_DEBUG=1 re-raises instead."""
    if os.environ.get("PIPELINE_DEBUG"):
        raise error
    print(f"error: {error}", file=sys.stderr)
    sys.exit(2)
