"""The one exception type that reaches users as a message rather than a traceback."""


class PipelineError(Exception):
    """A user-facing error: one line that names the key or file and says how to fix it."""
