"""Ctrl-C that always ends the run.

Python raises KeyboardInterrupt wherever the main thread happens to be when SIGINT arrives. When
that is a finalizer (TensorFlow frees tensors, iterators and resources in `__del__`), Python prints
"Exception ignored in ..." and the run carries on as if nothing happened. The handler installed here
also remembers the signal, and `raise_if_interrupted`, called at every epoch end and stage boundary,
raises it again where it cannot be swallowed.
"""

from __future__ import annotations

import signal
from types import FrameType

_received = False


def install() -> None:
    """Route SIGINT through `_interrupt` for the rest of this process."""
    signal.signal(signal.SIGINT, _interrupt)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    global _received
    _received = True
    raise KeyboardInterrupt


def raise_if_interrupted() -> None:
    """Raise KeyboardInterrupt if Ctrl-C arrived, even if its first raise was swallowed."""
    if _received:
        raise KeyboardInterrupt
