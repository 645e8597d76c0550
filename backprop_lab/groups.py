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

# Shipped options whose package is an optional extra: (group, option) -> (package, extra)
OPTIONAL_PACKAGES = {
    ("optimizer", "schedulefree_adamw"): ("schedulefree", "selftuning"),
    ("optimizer", "prodigy"): ("prodigyopt", "selftuning"),
}


def missing_package(group: str, option: str) -> str | None:
    """Why a shipped option cannot run here (its extra's package is not installed), or None."""
    import importlib.util

    needed = OPTIONAL_PACKAGES.get((group, option))
    if needed is None or importlib.util.find_spec(needed[0]) is not None:
        return None
    return f"needs the {needed[0]} package: pip install 'backprop-lab[{needed[1]}]'"


def group_options() -> dict[str, list[str]]:
    """The options of every config group, read from the configs shipped in the package."""
    root = resources.files("backprop_lab.configs")
    return {g: sorted(p.name[:-5] for p in (root / g).iterdir() if p.name.endswith(".yaml")) for g in GROUPS}
