"""Every job's settings checked before Hydra makes a folder: a refused value leaves nothing in outputs/.

`backprop-lab train` composes the config of each distinct choice of options once (Hydra's compose),
applies each job's own values to it (a sweep's `optimizer.lr=0.1,abc` is two jobs) and runs the same
rules a run runs (validate.py), plus the checks that need no data loaded: the files the run reads
exist and a `_target_` imports. The run checks again (the Python API comes in without this step).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from .errors import RefusedError


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


def check_jobs(
    overrides: list[str], multirun: bool, groups: tuple[str, ...], config_dir: str | None = None
) -> str | None:
    """One line for the first job whose settings a run would refuse (an unknown key, `+key` that
    nothing reads, a value out of its range, a missing file), else None."""
    jobs = job_overrides(overrides, multirun)
    composed: dict[tuple[str, ...], DictConfig | None] = {}
    for job in jobs or []:
        if any(o.package is not None or o.is_delete() for o in job):
            continue  # (rare forms: Hydra and the run check them)
        shape = tuple(o.input_line for o in job if o.key_or_group in groups)  # the options chosen decide the rest
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
                if o.key_or_group not in groups:
                    _set(cfg, o)
            _check(cfg)
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
    adding = override.is_add() or override.is_force_add()
    if not exists and not (adding and isinstance(node, DictConfig) and node.get("_target_") is not None):
        where = f"'{parent}'" if parent else "the config"
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


def _check(cfg: DictConfig) -> None:
    """What a run checks before its data loads (training._prepare), and the files it will read."""
    from . import targets
    from .training import registered_names
    from .validate import validate

    targets.complete(cfg, {})
    values = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(values, dict)
    validate(values, registered_names)
    for group in targets.GROUPS:  # a target that does not import is refused before any data loads
        if targets.is_target(cfg[group]):
            targets.resolve(group, cfg[group])
    _check_paths(values)


def _check_paths(values: dict[Any, Any]) -> None:
    """The files a run reads that the user names: there, and of the right kind."""
    from .data import image_folder, npz_file
    from .pretrain import resolve_weights_file

    data, pretrain = values["data"], values["pretrain"]
    if data.get("name") == "npz":
        npz_file(str(data["path"]))
    if data.get("name") == "images":
        image_folder(str(data["path"]))
    if pretrain.get("name") == "checkpoint":
        resolve_weights_file(str(pretrain["path"]))
