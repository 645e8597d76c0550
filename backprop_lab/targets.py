"""Options of the user's own: a group's YAML that names `_target_: package.module.Name` instead of a
shipped name. Its other keys are the arguments (a few, listed per group, are ours: `weight`, `init`,
`elementwise`). Targets import from installed packages and from the current working directory, so a
`mylab.py` beside the user's configs works. Every failure is a ConfigError naming the target.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any

from backprop_lab.errors import ConfigError

TARGET = "_target_"
# Keys of a target option that the lab reads itself, per group; everything else is an argument.
OWN_KEYS: dict[str, frozenset[str]] = {
    "optimizer": frozenset({"name", TARGET, "weight_decay", "elementwise", "search"}),
    "scheduler": frozenset({"name", TARGET}),
    "act": frozenset({"name", TARGET, "init"}),
    "regularizer": frozenset({TARGET, "weight", "l1", "l2", "l2_mode", "dropout", "batchnorm", "decay_bias_and_norm"}),
    "model": frozenset({"name", TARGET, "init"}),
    "data": frozenset(
        {
            "name",
            TARGET,
            "standardize",
            "augment",
            "crop_padding",
            "val_fraction",
            "n_train",
            "source_classes",
            "target_classes",
            "split_seed",
            "test_fraction",
            "layout",
        }
    ),
}
# What a target option leaves out gets the value a shipped option has (set act.init for another init).
DEFAULTS: dict[str, dict[str, Any]] = {
    "act": {"init": "he"},
    "model": {"init": None},
    "data": {
        "standardize": "auto",
        "augment": [],
        "crop_padding": 4,
        "val_fraction": 0.1,
        "n_train": None,
        "source_classes": None,
        "target_classes": None,
        "split_seed": 0,
        "test_fraction": 0.2,
        "layout": "auto",
    },
}
TARGET_GROUPS = tuple(OWN_KEYS)  # the groups whose option may name a _target_


def is_target(node: Any) -> bool:
    """Does this group's node name a `_target_` (an option of the user's own)?"""
    return isinstance(node, Mapping) and node.get(TARGET) is not None


def arguments(group: str, node: Any) -> dict[str, Any]:
    """The keys of a target option that go to the target as keyword arguments (lists as lists)."""
    from omegaconf import OmegaConf

    plain = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node)
    assert isinstance(plain, dict)
    return {str(k): v for k, v in plain.items() if k not in OWN_KEYS[group]}


def resolve(group: str, node: Any) -> Any:
    """The object `node._target_` names. A module beside the user's configs (the working directory)
    imports: that folder is searched after the standard library and the installed packages, and only
    while the target imports, so a `statistics.py` there never replaces the standard library's for the
    rest of the run; a target module named like one of theirs is refused."""
    dotted = str(node[TARGET])
    module_name, _, attr = dotted.rpartition(".")
    key = f"{group}._target_"
    if not module_name:
        raise ConfigError(key, dotted, "name a module and an object in it, e.g. mylab.MyOptimizer")
    cwd = os.getcwd()
    shadowed = _shadowed(module_name.partition(".")[0], cwd)
    if shadowed:
        raise ConfigError(key, dotted, shadowed)
    added = cwd not in sys.path
    if added:
        sys.path.append(cwd)
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # ModuleNotFoundError, or the module's own error while importing
        raise ConfigError(key, dotted, f"is not importable ({type(err).__name__}: {err})") from None
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)
    if not hasattr(module, attr):
        raise ConfigError(key, dotted, f"is not importable (module {module_name} has no {attr})")
    return getattr(module, attr)


def _shadowed(top: str, cwd: str) -> str | None:
    """Why a module `top` of the working folder may not be a target's: one of the standard library or
    the installed packages has its name (Python would import one in place of the other). None if not."""
    import importlib.machinery
    from pathlib import Path

    if not ((Path(cwd) / f"{top}.py").is_file() or (Path(cwd) / top / "__init__.py").is_file()):
        return None
    elsewhere = [p for p in sys.path if p not in ("", cwd)]
    if top in sys.builtin_module_names or importlib.machinery.PathFinder.find_spec(top, elsewhere) is not None:
        return (
            f"{top}.py in the working folder has the name of a module of the standard library or of an "
            f"installed package: rename it (and its _target_)"
        )
    return None


def call(group: str, node: Any, target: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """target(*args, **kwargs, **arguments): arguments it does not take are one line naming them."""
    given = {**arguments(group, node), **kwargs}
    try:
        inspect.signature(target).bind(*args, **given)
    except TypeError as err:
        raise ConfigError(f"{group}._target_", str(node[TARGET]), f"rejected its arguments ({err})") from None
    except ValueError:  # no signature to check (some builtins): let the call say
        pass
    return target(*args, **given)


def complete(cfg: Any, choices: Mapping[str, str]) -> None:
    """Give each target option a `name` (its file name, the Hydra choice, else the target's last part:
    summary.json's choices, compare and reports show it) and the lab's keys it left out (DEFAULTS)."""
    from omegaconf import open_dict

    for group in ("optimizer", "scheduler", "act", "model", "data"):
        node = cfg.get(group)
        if not is_target(node):
            continue
        with open_dict(node):
            if node.get("name") is None:
                node.name = choices.get(group) or str(node[TARGET]).rpartition(".")[2]
            for key, value in DEFAULTS.get(group, {}).items():
                if key not in node:
                    node[key] = value
