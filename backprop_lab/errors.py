"""The one error type a user sees: a bad setting, named by its config key."""

from __future__ import annotations

from typing import Any


class RefusedError(ValueError):
    """Bad input, refused before or at the start of a run: `str()` is the one line the CLI prints
    after `error: `. The Python API (backprop_lab.train) raises it; `run_dir` is the refused run's
    folder (with its summary.json), when one was made."""

    def __init__(self, message: str, run_dir: str | None = None):
        super().__init__(message)
        self.run_dir = run_dir


class ConfigError(RefusedError):
    """A setting that cannot work. `str()` is the one line printed to the user."""

    def __init__(self, key: str, value: Any, allowed: str):
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"{key}={_show(value)} is not valid: {allowed}")


def _show(value: Any) -> str:
    if isinstance(value, str):
        return value if value else "''"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)
