"""The config groups of `backprop-lab train` (one folder of options each in configs/) and their options."""

from __future__ import annotations

from importlib import resources

GROUPS = (
    "data",
    "model",
    "act",
    "regularizer",
    "optimizer",
    "scheduler",
    "pretrain",
    "trainer",
    "logger",
    "experiment",
)


def group_options() -> dict[str, list[str]]:
    """The options of every config group, read from the configs shipped in the package."""
    root = resources.files("backprop_lab.configs")
    return {g: sorted(p.name[:-5] for p in (root / g).iterdir() if p.name.endswith(".yaml")) for g in GROUPS}
