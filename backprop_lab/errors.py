"""The one error type a user sees: a bad setting, named by its config key."""

from __future__ import annotations

from typing import Any


class ConfigError(ValueError):
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
