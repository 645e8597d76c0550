"""backprop-lab's settings for the cluster and search plugins, stored under the plugins' own names.

`hydra/launcher=submitit_slurm`, `hydra/launcher=submitit_local` and `hydra/sweeper=optuna` select
the plugins' configs as in any Hydra app; `register()` stores each again with the plugin's schema
as its base (every key of the plugin stays, typed, overridable: hydra.launcher.qos=high) and our
values on top, from NAME.yaml in this folder. The Optuna sweeper is our own (its schema beside it).

Two things Hydra rules out make it a function the CLI calls after Hydra's plugin scan: a YAML file
of the plugin's name in the config folder gets validated against the plugin's schema, and a config
stored by a plugin module of ours would be overwritten by another plugin of the same name (the old
hydra-optuna-sweeper, if installed), since the scan executes every plugin module.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

PLUGINS = {  # name: (group, where the plugin's schema is, its class, group defaults after ours, our class)
    "submitit_slurm": ("hydra/launcher", "hydra_plugins.hydra_submitit_launcher.config", "SlurmQueueConf", [], None),
    "submitit_local": ("hydra/launcher", "hydra_plugins.hydra_submitit_launcher.config", "LocalQueueConf", [], None),
    "optuna": (  # ours (Optuna >= 4, ask-and-tell, pruning): hydra_plugins/backprop_lab_launchers/optuna_search.py
        "hydra/sweeper",
        "hydra_plugins.backprop_lab_launchers.optuna_search",
        "OptunaSweeperConf",
        [{"params": "lr_decay_dropout"}],  # the search space: hydra/sweeper/params=...
        None,
    ),
}


def register() -> None:
    """Store our version of every installed plugin's config (after Hydra has scanned the plugins)."""
    import importlib

    from hydra.core.config_store import ConfigStore
    from hydra.core.plugins import Plugins
    from omegaconf import DictConfig, OmegaConf

    Plugins.instance()  # the scan, once per process: the plugins store their own configs
    store = ConfigStore.instance()
    for name, (group, module, schema, after_self, target) in PLUGINS.items():
        try:
            node: Any = getattr(importlib.import_module(module), schema)
        except ImportError:  # not installed: the CLI says how to install it when it is chosen
            continue
        # (in a group of its own: it is not an option users should see in --help or tab completion)
        store.store(group=f"backprop_lab_schemas/{group}", name=name, node=node, provider="backprop-lab")
        values = OmegaConf.load(str(resources.files(__name__) / f"{name}.yaml"))
        assert isinstance(values, DictConfig)  # our YAML files are mappings
        if target is not None:
            values["_target_"] = target
        store.store(
            group=group,
            name=name,
            node=OmegaConf.merge(
                {"defaults": [{f"/backprop_lab_schemas/{group}@_here_": name}, "_self_", *after_self]}, values
            ),
            provider="backprop-lab",
        )
