"""Ctrl-C and SIGTERM: outside the training loop they stop at once; inside it, the current step
finishes, a checkpoint is written, and then the run stops (a second signal stops at once)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

requested = False  # a signal came while the loop was running
_deferring = False  # the loop is running and will look at `requested` after each step


def handle(signum: int, frame: Any) -> None:
    """The handler for SIGINT and SIGTERM (installed by the CLI)."""
    global requested
    if requested or not _deferring:
        raise KeyboardInterrupt
    requested = True


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """While inside, a signal only sets `requested`."""
    global _deferring, requested
    _deferring, requested = True, False
    try:
        yield
    finally:
        _deferring = False
