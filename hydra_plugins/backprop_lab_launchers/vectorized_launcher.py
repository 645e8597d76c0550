"""hydra/launcher=vectorized: the jobs of a sweep that differ only in `seed` and the values of
backprop_lab.vectorized.members.BATCHED_KEYS (optimizer, schedule, l1, l2, dropout rate, init) train as one
batched model.

    backprop-lab train -m hydra/launcher=vectorized 'seed=range(8)' act=relu,tanh
    backprop-lab train -m hydra/launcher=vectorized optimizer.lr=0.001,0.003,0.01,0.03 seed=0,1   # one group of 8

groups the jobs by their config without the seed (here: relu x 8 seeds, tanh x 8 seeds), trains each
group in one process as backprop_lab.vectorized.members.Members, and gives every job its own ordinary run folder
(.hydra/, metrics.jsonl, summary.json, weights/), so compare and report cannot tell them from jobs the
basic launcher ran. Jobs with a pretraining stage pretrain one after another, then fine-tune as one
batched model. A job with no partner, or a group that cannot be batched (gradual unfreezing, a model
or regularizer of the user's own), runs one by one as the basic launcher would, with a message saying
why.
"""

# (no `from __future__ import annotations`: Hydra loads plugins in a way that breaks it for dataclasses)
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

log = logging.getLogger(__name__)


@dataclass
class VectorizedLauncherConf:
    _target_: str = "hydra_plugins.backprop_lab_launchers.vectorized_launcher.VectorizedLauncher"
    max_members: int | None = None  # at most this many jobs in one batched model (null: all of a group)


ConfigStore.instance().store(
    group="hydra/launcher", name="vectorized", node=VectorizedLauncherConf, provider="backprop-lab"
)


def _collect_into(jobs: list[Any]) -> Any:
    """A task function that, instead of running, appends the job Hydra prepared to `jobs`."""
    from backprop_lab.run.app import current_job

    return lambda cfg: jobs.append(current_job(cfg))


def _task_config(config: DictConfig) -> DictConfig:
    task = OmegaConf.create(OmegaConf.to_container(config, resolve=False))
    assert isinstance(task, DictConfig)  # a job's config is a mapping
    with read_write(task), open_dict(task):
        del task["hydra"]
    return task


def _all_but_seed(task_config: DictConfig) -> str:
    """The group a job belongs to (given its _task_config): its config without the seed, and without the
    values members may hold each their own (backprop_lab.vectorized.members.batched_keys: optimizer, schedule, l1,
    l2, dropout, init)."""
    from backprop_lab.vectorized.members import batched_keys

    task = OmegaConf.to_container(task_config, resolve=False)
    assert isinstance(task, dict)
    task.pop("seed", None)
    for key in batched_keys(task_config):
        group, _, name = key.partition(".")
        if not name:
            task.pop(group, None)
        elif key == "regularizer.dropout":  # members share the architecture: dropout layers or none
            task[group][name] = float(OmegaConf.select(task_config, key) or 0) > 0
        else:
            task[group].pop(name, None)
    return json.dumps(task, sort_keys=True, default=str)


def _job_dir(config: DictConfig) -> Path:
    """The folder Hydra will give this job of the sweep."""
    return Path(str(config.hydra.sweep.dir)) / str(config.hydra.sweep.subdir)


class ComposedOnce:
    """Hydra's config loader, but a job's config is composed once, not twice: the sweeper composes each
    job of a batch to check it (Sweeper.validate_batch_is_legal), then the launcher composes it again,
    and each compose parses the YAML files anew: about half the set-up of a sweep of small runs
    (BENCHMARKS.md). The loader keeps what the check composed; `take` hands it to the launcher."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader
        self.checked: dict[tuple[int, tuple[str, ...]], DictConfig] = {}

    def load_sweep_config(self, master_config: DictConfig, sweep_overrides: list[str]) -> DictConfig:
        config: DictConfig = self.loader.load_sweep_config(master_config, sweep_overrides)
        self.checked[(id(master_config), tuple(sweep_overrides))] = config
        return config

    def take(self, master_config: DictConfig, sweep_overrides: list[str]) -> DictConfig:
        """The job's config as the check composed it (no one else holds it), else composed now."""
        config = self.checked.pop((id(master_config), tuple(sweep_overrides)), None)
        return config if config is not None else self.loader.load_sweep_config(master_config, sweep_overrides)

    def __getattr__(self, name: str) -> Any:  # everything else is the loader's own
        return getattr(self.loader, name)


class VectorizedLauncher(Launcher):
    def __init__(self, max_members: int | None = None) -> None:
        super().__init__()
        self.max_members = max_members
        self.config: DictConfig | None = None
        self.task_function: Any = None
        self.hydra_context: Any = None

    def setup(self, *, hydra_context: Any, task_function: Any, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function
        if not isinstance(hydra_context.config_loader, ComposedOnce):  # (the sweeper shares this context)
            hydra_context.config_loader = ComposedOnce(hydra_context.config_loader)

    def _run(self, config: DictConfig, task_function: Any) -> JobReturn:
        ret = run_job(
            hydra_context=self.hydra_context,
            task_function=task_function,
            config=config,
            job_dir_key="hydra.sweep.dir",
            job_subdir_key="hydra.sweep.subdir",
        )
        assert self.config is not None, "Hydra calls setup() before launching"
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return ret

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from backprop_lab.run.app import run_value
        from backprop_lab.run.sweep_resume import action, clear, resuming
        from backprop_lab.run.training import run_members
        from backprop_lab.vectorized.members import BATCHED_KEYS, differing_values, why_not_batched

        setup_globals()
        assert self.config is not None and self.hydra_context is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        configs = []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            config = self.hydra_context.config_loader.take(self.config, list(overrides))
            with open_dict(config):
                config.hydra.job.id = idx
                config.hydra.job.num = idx
            configs.append(config)

        returns: list[JobReturn | None] = [None] * len(configs)
        groups: dict[str, list[int]] = {}
        tasks: dict[int, DictConfig] = {}  # each grouped job's config without hydra: made once
        for i, config in enumerate(configs):
            if resuming() and action(_job_dir(config)) != "start":  # a resumed sweep: kept or resumed alone
                returns[i] = self._run(config, self.task_function)
                continue
            if resuming():
                clear(_job_dir(config))
            tasks[i] = _task_config(config)
            groups.setdefault(_all_but_seed(tasks[i]), []).append(i)
        size = self.max_members or len(configs)
        batches = [g[i : i + size] for g in groups.values() for i in range(0, len(g), size)]
        log.info(f"Vectorized launcher: {len(configs)} jobs in {len(batches)} group(s)")

        for batch in batches:
            names = " ".join(f"#{initial_job_idx + i}" for i in batch)
            reason = (
                "no other job differs from it only in seed, optimizer, schedule, l1, l2, dropout rate or init"
                if len(batch) == 1
                else why_not_batched(tasks[batch[0]])
            )
            if reason:
                log.info(f"\tone by one ({reason}): {names}")
                for i in batch:
                    returns[i] = self._run(configs[i], self.task_function)
                continue
            varying = ("seed=", *(f"{key}{sep}" for key in BATCHED_KEYS for sep in "=."))
            shared = " ".join(o for o in filter_overrides(job_overrides[batch[0]]) if not o.startswith(varying))
            differing = differing_values([tasks[i] for i in batch])
            values = "".join(f" {key}={each}" for key, each in differing.items())
            log.info(f"\tone batched model: {names} : {shared} seed={[configs[i].seed for i in batch]}{values}")
            jobs: list[Any] = []
            prepared = {i: self._run(configs[i], _collect_into(jobs)) for i in batch}
            # run_job made each folder and its .hydra/; now train them together
            summaries = run_members(jobs)
            for i, summary in zip(batch, summaries, strict=True):
                prepared[i].return_value = run_value(summary)  # (SweepOutcomes counts the unfinished)
                returns[i] = prepared[i]
        return [r for r in returns if r is not None]
