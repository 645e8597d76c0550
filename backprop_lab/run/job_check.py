"""Every job's settings checked before Hydra makes a folder: a refused value leaves nothing in outputs/.

`backprop-lab train` composes the config of each distinct choice of options once (Hydra's compose),
applies each job's own values to it (a sweep's `optimizer.lr=0.1,abc` is two jobs) and runs the same
rules a run runs (validate.py), plus the checks that need no data loaded: the files the run reads
exist and a `_target_` imports. The run checks again (the Python API comes in without this step).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from backprop_lab.errors import RefusedError
from backprop_lab.groups import GROUPS, group_options


def compose_train(overrides: list[str], config_dir: str | Path | None = None) -> DictConfig:
    """The config `backprop-lab train [--config-dir DIR] OVERRIDES` composes (Hydra's errors raised)."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    search = [f"hydra.searchpath=[file://{Path(config_dir).resolve()}]"] if config_dir is not None else []
    with initialize_config_module(config_module="backprop_lab.configs", version_base="1.3"):
        return compose(config_name="train", overrides=[*search, *overrides])


def job_overrides(overrides: list[str], multirun: bool) -> list[list[Any]] | None:
    """Each job's parsed overrides (Hydra's own expansion of a sweep), without the `hydra` ones; None
    where the jobs are not known before they run (a search sweeper picks them) or Hydra will refuse
    the line itself."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    try:
        parsed = parser.parse_overrides(overrides=overrides)
    except Exception:
        return None
    if any(o.key_or_group in ("hydra/sweeper", "hydra.sweeper.params") for o in parsed):
        return None
    own = [o for o in parsed if not o.is_hydra_override() and not o.key_or_group.startswith("hydra.")]
    if not multirun:
        return [own]
    try:
        batches = BasicSweeper.split_arguments(own, None)
        return [parser.parse_overrides(overrides=job) for batch in batches for job in batch]
    except Exception:
        return None


def check_jobs(overrides: list[str], multirun: bool, config_dir: str | None = None) -> str | None:
    """One line for the first job whose settings a run would refuse (an unknown key, `+key` that
    nothing reads, a value out of its range, a missing file), else None."""
    jobs = job_overrides(overrides, multirun)
    composed: dict[tuple[str, ...], DictConfig | None] = {}
    for job in jobs or []:
        if any(o.package is not None or o.is_delete() for o in job):
            continue  # (rare forms: Hydra and the run check them)
        shape = tuple(o.input_line for o in job if o.key_or_group in GROUPS)  # the options chosen decide the rest
        if shape not in composed:
            try:
                composed[shape] = compose_train(list(shape), config_dir)
            except Exception:
                composed[shape] = None  # Hydra will say what is wrong with the choices
        base = composed[shape]
        if base is None:
            continue
        cfg = base.copy()
        try:
            for o in job:
                if o.key_or_group not in GROUPS:
                    _set(cfg, o)
            _check(cfg, {o.key_or_group: str(o.value()) for o in job if o.key_or_group in GROUPS})
        except RefusedError as err:
            line = " ".join(o.input_line for o in job if o.input_line)
            return f"{err}" + (f" (in the job: {line})" if multirun and line else "")
    return None


def _set(cfg: DictConfig, override: Any) -> None:
    """Set an override's value on the composed config: a key the config does not have is refused, and
    so is `+key` that nothing would read (only a `_target_` option takes keys of its own choosing)."""
    key = override.key_or_group
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    # `leaf in node` is False for a key whose value is ??? (required); keys() lists it
    exists = isinstance(node, DictConfig) and leaf in node.keys()  # noqa: SIM118
    if isinstance(node, ListConfig) and leaf.isdigit():  # an element of a list: optimizer.betas.0=0.95
        exists = int(leaf) < len(node)
    adding = override.is_add() or override.is_force_add()
    if not exists and not (adding and isinstance(node, DictConfig) and node.get("_target_") is not None):
        where = f"'{parent}'" if parent else "the config"
        if isinstance(node, ListConfig):
            raise RefusedError(f"{key} is not an element of {parent}: it holds {len(node)} (from 0)")
        if not isinstance(node, DictConfig):
            raise RefusedError(f"{key} is not a key of the config ({parent} holds no keys)")
        keys = ", ".join(str(k) for k in node)
        if adding:
            raise RefusedError(
                f"{override.input_line}: nothing reads {key} ({where} has no such key; only a _target_ option "
                f"takes keys of its own); its keys: {keys}"
            )
        raise RefusedError(f"{key} is not a key of {where}; its keys: {keys}")
    with open_dict(cfg):
        OmegaConf.update(cfg, key, override.value(), merge=False)


def _check(cfg: DictConfig, choices: dict[str, str]) -> None:
    """What a run checks before its data loads (training.check_settings), and the files it will read."""
    from backprop_lab.run.training import check_settings

    _check_paths(check_settings(cfg, choices))


def _check_paths(values: dict[Any, Any]) -> None:
    """The files a run reads that the user names: there, and of the right kind."""
    from backprop_lab.data.datasets import image_folder, npz_file
    from backprop_lab.run.pretrain import resolve_weights_file

    data, pretrain = values["data"], values["pretrain"]
    if data.get("name") == "npz":
        npz_file(str(data["path"]))
    if data.get("name") == "images":
        image_folder(str(data["path"]))
    if pretrain.get("name") == "checkpoint":
        resolve_weights_file(str(pretrain["path"]))


# ------------------------------------------------------------------ the command line, before Hydra starts
def _chosen_options(value: Any) -> list[str]:
    """The option names an override's value selects: 'relu', 'relu,tanh', '[l2,dropout]'."""
    from hydra.core.override_parser.types import ChoiceSweep

    if isinstance(value, ChoiceSweep):
        return [name for v in value.list for name in _chosen_options(v)]
    if isinstance(value, (list, tuple)):
        return [name for v in value for name in _chosen_options(v)]
    return [value] if isinstance(value, str) else []


def check_group_choices(overrides: list[str]) -> str | None:
    """A one-line error for an unknown option of a config group, else None (Hydra checks the rest)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(overrides=overrides)
    except Exception:
        return None  # let Hydra explain its own syntax errors
    options = group_options()
    for o in parsed:
        group = o.key_or_group
        if group not in options or o.package is not None or o.is_delete():
            continue
        for name in _chosen_options(o.value()):
            if name not in options[group] and name != "null":
                return f"{group}={name} is not an option of '{group}'; choose one of: {', '.join(options[group])}"
    return None


PLUGINS = {  # Hydra options whose plugin may be missing: (module, how to install it)
    "hydra/sweeper=optuna": (
        "optuna",
        "pip install 'backprop-lab[search]' (in a clone: pip install '.[search]')",
    ),
    "hydra/launcher=submitit_slurm": ("hydra_plugins.hydra_submitit_launcher", "pip install hydra-submitit-launcher"),
    "hydra/launcher=submitit_local": ("hydra_plugins.hydra_submitit_launcher", "pip install hydra-submitit-launcher"),
}


def check_plugins(overrides: list[str]) -> str | None:
    """A one-line error for a launcher or sweeper whose plugin is not installed."""
    from importlib.util import find_spec

    for override in overrides:
        module, install = PLUGINS.get(override.replace(" ", ""), (None, None))
        if module is not None and find_spec(module) is None:
            return f"{override} needs a Hydra plugin that is not installed: {install}"
    return None


def check_composition(config_dir: str | Path | None, overrides: list[str]) -> str | None:
    """What Hydra would refuse in composing the config with the user's own config folder (an unknown
    option or key), as one line; None when it composes."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        compose_train(overrides, config_dir)
    except (HydraException, OmegaConfBaseException) as err:
        return " ".join(str(err).split("Config search path:")[0].split())  # Hydra's message, on one line
    return None


def precheck(args: list[str]) -> str | None:
    """One-line errors for unknown options and keys, before Hydra starts. With the user's own config
    folder (--config-dir), Hydra composes the config once first and its refusal is made one line."""
    from hydra._internal.utils import get_args_parser

    try:
        parsed = get_args_parser().parse_args(args)
    except SystemExit:  # let Hydra report its own usage errors
        return None
    if parsed.config_path or parsed.config_name:
        return None
    folder_problem = check_output_folder(parsed.overrides, parsed.multirun)
    if folder_problem:
        return folder_problem
    if parsed.config_dir:
        problem = check_plugins(parsed.overrides) or (
            None if parsed.multirun else check_composition(parsed.config_dir, parsed.overrides)
        )
    else:
        problem = check_plugins(parsed.overrides) or check_group_choices(parsed.overrides)
    if problem or parsed.cfg or parsed.info or parsed.help or parsed.hydra_help or parsed.shell_completion:
        return problem  # (printing a config or help trains nothing: no values to check, torch not imported)
    return check_jobs(parsed.overrides, parsed.multirun, parsed.config_dir)


def check_output_folder(overrides: list[str], multirun: bool) -> str | None:
    """The run's (or the sweep's) folder must be one this process can make and write: a folder under a
    file, without permission or on a read-only disk is refused in one line, before Hydra tries."""
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    given = [o.split("=", 1)[1] for o in overrides if o.startswith(f"{key}=")]
    folder = Path(given[-1].split("${", 1)[0] or ".") if given else Path("multirun" if multirun else "outputs")
    folder = folder.expanduser().absolute()
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    setting = f"{key}={given[-1] if given else folder} is not valid: {existing}"
    if not existing.is_dir():
        return f"{setting} is a file, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{setting} is not writable here"
    # a run into a folder another process trains: refused before Hydra writes (under torchrun, rank 0
    # takes the lock when it starts; a probe here would collide with the other ranks' probes)
    if given and not multirun and "WORLD_SIZE" not in os.environ:
        from backprop_lab.run.folder_lock import holder_problem

        return holder_problem(folder)
    return None
