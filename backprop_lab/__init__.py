"""backprop-lab: a configuration-driven lab for the techniques that make backpropagation work.

    from backprop_lab import train, load_runs

Both are imported on first use, so `import backprop_lab` stays light (no torch, no pandas).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from backprop_lab.api import load_runs, train

__all__ = ["train", "load_runs"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from backprop_lab import api

        return getattr(api, name)
    raise AttributeError(f"module 'backprop_lab' has no attribute {name!r}")
