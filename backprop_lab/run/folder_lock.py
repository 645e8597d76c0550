"""One process per run folder: `train` and `resume` hold an OS lock on <run folder>/.lock.

The lock is fcntl's flock: the operating system releases it when the process ends, however it ends
(SIGKILL, a node that fails), so a killed run never leaves a stale lock. A second process on the same
folder (two `resume`s, a SLURM requeue while the old job lingers) is refused in one line that names
the process holding it, before it writes anything. Where fcntl does not exist (Windows) nothing is
locked.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import IO

from backprop_lab.errors import RefusedError

LOCK_FILE = ".lock"
_held: dict[Path, IO[str]] = {}  # the folders this process holds, by resolved path


class FolderInUse(RefusedError):
    """Another process holds the run folder."""


def _flock(handle: IO[str]) -> bool:
    """Take the lock on an open lock file without waiting; False when another process holds it."""
    try:
        import fcntl
    except ImportError:  # no flock here: one process per folder is the user's to keep
        return True
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _refusal(run_dir: Path, handle: IO[str]) -> FolderInUse:
    handle.seek(0)
    holder = handle.read().strip() or "another process"
    return FolderInUse(
        f"{run_dir} is in use by {holder}; wait for it to end or stop it (nothing was changed)", str(run_dir)
    )


def hold(run_dir: Path) -> bool:
    """Hold `run_dir`'s lock for this process (until release() or the process ends). True when this call
    took it, False when this process held it already; FolderInUse when another process holds it."""
    key = Path(run_dir).resolve()
    if key in _held:
        return False
    key.mkdir(parents=True, exist_ok=True)
    handle = open(key / LOCK_FILE, "a+")  # noqa: SIM115 (kept open: the lock lives as long as the handle)
    if not _flock(handle):
        refusal = _refusal(run_dir, handle)
        handle.close()
        raise refusal
    handle.seek(0)
    handle.truncate()
    handle.write(f"process {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    handle.flush()
    _held[key] = handle
    return True


def release(run_dir: Path) -> None:
    """Give the lock back (closing the file releases it); the .lock file stays, empty of meaning."""
    handle = _held.pop(Path(run_dir).resolve(), None)
    if handle is not None:
        handle.close()


def holder_problem(run_dir: Path) -> str | None:
    """The one-line refusal if another process holds `run_dir` now, else None (takes nothing)."""
    lock = Path(run_dir) / LOCK_FILE
    if not lock.is_file() or Path(run_dir).resolve() in _held:
        return None
    with open(lock, "a+") as handle:
        if _flock(handle):
            return None  # (closing the file releases the lock just taken)
        return str(_refusal(Path(run_dir), handle))
