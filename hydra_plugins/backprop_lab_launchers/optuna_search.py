"""hydra/sweeper=optuna: a search with Optuna (>= 4) through its ask-and-tell API. Each trial is a job
of the sweep (a run folder), launched by whatever launcher the sweep uses; the job's best validation
value (trainer.monitor) is the trial's value. A run that diverges or fails is a failed trial; with
`hydra.sweeper.pruner=median|hyperband|...` a run reports at every evaluation and one the pruner stops
ends with status `pruned`. With `hydra.sweeper.storage` (e.g. sqlite:///study.db) the study lives in
that database: running the same command again resumes it up to n_trials, and a trial whose sweep
was killed is run again.

The search space, sampler and pruner are built by backprop_lab.run.search; backprop_lab's CLI stores this
config under hydra/sweeper=optuna (plugin_configs) with its values from plugin_configs/optuna.yaml.
"""

# (no `from __future__ import annotations`: see vectorized_launcher.py)
import logging
import math
import os
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.plugins.sweeper import Sweeper
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)
IN_PROCESS_LAUNCHERS = ("BasicLauncher", "VectorizedLauncher")  # jobs that share the sweeper's memory


@dataclass
class SamplerConf:
    name: str = "tpe"  # tpe | random | qmc | gp (backprop_lab.run.search.SAMPLERS)
    seed: int | None = None  # the same seed asks the same trials


@dataclass
class OptunaSweeperConf:
    _target_: str = "hydra_plugins.backprop_lab_launchers.optuna_search.OptunaSweeper"
    direction: str = "maximize"  # maximize | minimize
    n_trials: int = 20  # trials in the study, those of an earlier session of it included
    n_jobs: int = 1  # trials asked at a time (run side by side with hydra/launcher=joblib)
    max_failure_rate: float = 1.0  # stop the study when more than this fraction of its trials failed
    storage: str | None = None  # null: in memory; sqlite:///study.db (or any RDB URL): resumable
    study_name: str | None = None
    sampler: SamplerConf = field(default_factory=SamplerConf)
    pruner: str = "none"  # none | median | hyperband | successive_halving | percentile
    pruner_kwargs: Any = None  # the pruner's own arguments, e.g. {n_startup_trials: 5, n_warmup_steps: 500}
    params: dict[str, str] | None = None  # the search space, in Hydra's override grammar


def _refuse(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


class OptunaSweeper(Sweeper):
    def __init__(self, **settings: Any) -> None:
        self.settings = OmegaConf.create(settings)
        self.config: DictConfig | None = None
        self.launcher: Any = None
        self.job_idx = 0
        self.retried: list[int] = []  # trials a killed sweep left running, failed and asked again

    def setup(self, *, hydra_context: Any, task_function: Any, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function
        )

    def sweep(self, arguments: list[str]) -> None:
        import optuna

        from backprop_lab.errors import ConfigError
        from backprop_lab.run.search import ACTIVE_STUDIES, TRIAL_ENV, override_value

        assert self.config is not None, "Hydra calls setup() before sweep()"
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own lines below say what happens
        s = self.settings
        try:
            study, space, fixed = self._study(arguments)
        except ConfigError as err:
            _refuse(str(err))
        if s.storage is None:
            ACTIVE_STUDIES[study.study_name] = study  # jobs of this process report to it (pruning)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        numbered = [int(p.name) for p in sweep_dir.iterdir() if p.name.isdigit()]
        self.job_idx = max(numbered, default=-1) + 1  # a resumed study in the same folder: new folders
        to_go = int(s.n_trials) - len(_finished(study)) + len(self.retried)  # (run again: not counted)
        while to_go > 0:
            trials = self._ask(study, space, min(int(s.n_jobs), to_go))
            overrides: list[list[str]] = []
            for trial in trials:
                trial.set_user_attr("sweeper", f"{socket.gethostname()}:{os.getpid()}")
                trial.set_user_attr("job_dir", str(sweep_dir / str(self.job_idx + len(overrides))))
                values = [f"{key}={override_value(value)}" for key, value in trial.params.items()]
                # (the job opens its trial by id, Trial(study, id): the one handle Optuna offers for it)
                overrides.append([*fixed, *values, f"++hydra.job.env_set.{TRIAL_ENV}={trial._trial_id}"])
            returns = self.launcher.launch(overrides, initial_job_idx=self.job_idx)
            self.job_idx += len(returns)
            for trial, ret in zip(trials, returns, strict=True):
                _tell(study, trial, ret)
            to_go -= len(trials)
            failed = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,)))
            if to_go > 0 and failed / max(1, len(_finished(study))) > float(s.max_failure_rate):
                log.error(f"stopping the study: {failed} failed trials, over hydra.sweeper.max_failure_rate")
                break
        self._write_results(study, sweep_dir)

    def _ask(self, study: Any, space: dict[str, Any], count: int) -> list[Any]:
        """`count` trials; with the qmc sampler, the next points of its sequence (search.qmc_points),
        enqueued after any trial a killed sweep left to run again, so a batch is quasirandom throughout."""
        import optuna

        from backprop_lab.run.search import qmc_points

        if str(self.settings.sampler.name) == "qmc":
            trials = study.get_trials(deepcopy=False)
            waiting = sum(t.state == optuna.trial.TrialState.WAITING for t in trials)
            drawn = sum("qmc_index" in t.user_attrs for t in trials)
            for i, params in enumerate(qmc_points(space, self.settings.sampler.seed, drawn, count - waiting)):
                study.enqueue_trial(params, user_attrs={"qmc_index": drawn + i})
        return [study.ask(space) for _ in range(count)]

    def _study(self, arguments: list[str]) -> tuple[Any, dict[str, Any], list[str]]:
        """The study (created, or loaded from its storage), the search space and the fixed overrides."""
        import optuna

        from backprop_lab.errors import ConfigError
        from backprop_lab.run.search import make_pruner, make_sampler, search_space

        s = self.settings
        for key, ok in (("n_trials", int(s.n_trials) >= 1), ("n_jobs", int(s.n_jobs) >= 1)):
            if not ok:
                raise ConfigError(f"hydra.sweeper.{key}", s[key], "must be an integer >= 1")
        if s.direction not in ("maximize", "minimize"):
            raise ConfigError("hydra.sweeper.direction", s.direction, "choose maximize or minimize")
        launcher = type(self.launcher).__name__
        if s.pruner != "none" and s.storage is None and launcher not in IN_PROCESS_LAUNCHERS:
            raise ConfigError(
                "hydra.sweeper.storage",
                None,
                f"pruning trials that {launcher} runs in other processes needs a shared study: "
                "set hydra.sweeper.storage=sqlite:///study.db",
            )
        params = [f"{key}={value}" for key, value in (s.params or {}).items()]
        space, fixed = search_space([*params, *arguments])
        sampler = make_sampler(str(s.sampler.name), s.sampler.seed)
        pruner = make_pruner(str(s.pruner), dict(OmegaConf.to_container(s.pruner_kwargs) if s.pruner_kwargs else {}))  # type: ignore[arg-type]
        try:
            study = optuna.create_study(
                study_name=s.study_name,
                storage=s.storage,
                sampler=sampler,
                pruner=pruner,
                direction=s.direction,
                load_if_exists=True,
            )
        except Exception as err:  # a storage URL SQLAlchemy cannot open, a study of the other direction
            raise ConfigError("hydra.sweeper.storage", s.storage, " ".join(str(err).split())[:300]) from None
        before = _finished(study)
        if study.trials and s.sampler.seed is not None:  # a resumed study: the seed shifted by the trials so
            # far, or a seeded sampler would ask the first session's trials again
            study.sampler = make_sampler(str(s.sampler.name), int(s.sampler.seed) + len(study.trials))
        self.retried = retried = _retry_stale(study)
        log.info(
            f"Optuna study {study.study_name}: {s.direction} {self.config.trainer.monitor if self.config else ''}, "
            f"sampler {s.sampler.name} (seed {s.sampler.seed}), pruner {s.pruner}, storage {s.storage or 'in memory'}"
        )
        if before or retried:
            best = _best_value(study)
            log.info(
                f"resuming: {len(before)} trial(s) finished before"
                + (f" (best value {best:.6g})" if best is not None else "")
                + (f"; {len(retried)} interrupted trial(s) run again: {retried}" if retried else "")
            )
        return study, space, fixed

    def _write_results(self, study: Any, sweep_dir: Path) -> None:
        import optuna

        states = optuna.trial.TrialState
        counts = {
            state.name.lower(): len(study.get_trials(deepcopy=False, states=(state,)))
            for state in (states.COMPLETE, states.PRUNED, states.FAIL)
        }
        results: dict[str, Any] = {
            "name": "optuna",
            "study_name": study.study_name,
            "storage": self.settings.storage,
            "direction": str(self.settings.direction),
            "trials": counts,
        }
        if counts["complete"]:
            best = study.best_trial
            results.update(best_params=best.params, best_value=best.value, best_trial=best.number)
            results["best_job_dir"] = best.user_attrs.get("job_dir")
            log.info(f"Best value {best.value:.6g} (trial {best.number}): {best.params}")
        else:
            log.error("no trial completed: every run diverged or failed (their folders are listed below)")
        log.info(f"Trials: {counts}")
        OmegaConf.save(OmegaConf.create(results), sweep_dir / "optimization_results.yaml")


def _finished(study: Any) -> list[Any]:
    return [t for t in study.get_trials(deepcopy=False) if t.state.is_finished()]


def _best_value(study: Any) -> float | None:
    import optuna

    return study.best_value if study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)) else None


def _retry_stale(study: Any) -> list[int]:
    """Trials left running by a sweep of this machine whose process is gone (killed, preempted): failed,
    and their parameters asked again first. Trials of live sweeps (here or elsewhere) are left alone."""
    import optuna

    host, stale = socket.gethostname(), []
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        where, _, pid = str(trial.user_attrs.get("sweeper", "")).rpartition(":")
        if where != host or not pid.isdigit() or _alive(int(pid)):
            continue
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
        study.enqueue_trial(trial.params, skip_if_exists=False)
        stale.append(trial.number)
    return stale


def _alive(pid: int) -> bool:
    """Whether a sweep process of this machine still runs (this process has no trial running yet: one
    recorded under its pid is an earlier process's)."""
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _tell(study: Any, trial: Any, ret: Any) -> None:
    """A job's outcome to Optuna, from its run folder's summary.json: its value, a pruned trial, or a
    failed one (diverged, failed, refused, or a job that raised)."""
    import json

    import optuna

    try:
        value = ret.return_value  # (raises what the job raised)
        summary = json.loads((Path(str(ret.hydra_cfg.hydra.runtime.output_dir)) / "summary.json").read_text())
    except Exception as err:
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        log.warning(f"Trial {trial.number} failed: {type(err).__name__}: {err}")
        return
    status = summary.get("status")
    if status == "pruned":
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        log.info(f"Trial {trial.number} pruned at step {summary.get('steps')} ({summary['run_dir']})")
    elif status == "completed" and isinstance(value, (int, float)) and math.isfinite(value):
        study.tell(trial, float(value))
        log.info(f"Trial {trial.number}: {float(value):.6g} with {trial.params}")
    else:
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        log.warning(f"Trial {trial.number} failed: {status}: {summary.get('error')} ({summary['run_dir']})")
