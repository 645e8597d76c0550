"""Ctrl-C and SIGTERM: outside the training loop they stop at once; inside it, the current step
finishes, a checkpoint is written, and then the run stops (a second signal stops at once)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


class Interrupted(KeyboardInterrupt):
    """The loop stopped on a signal after checkpointing: where it stopped, and (set by the run that
    catches it on its way out) the folder to resume."""

    def __init__(self, stage: str, step: int, max_steps: int):
        super().__init__(f"interrupted at step {step} of {max_steps} ({stage})")
        self.stage, self.step, self.max_steps = stage, step, max_steps
        self.resume_dir: str | None = None


def message(err: KeyboardInterrupt) -> str:
    """What the command prints when a run or sweep is interrupted: where it stopped, how to go on."""
    if not isinstance(err, Interrupted):
        return "interrupted"
    where = f"interrupted at step {err.step} of {err.max_steps} (stage {err.stage})"
    return where + (f"; resume with: backprop-lab resume {err.resume_dir}" if err.resume_dir else "")


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
