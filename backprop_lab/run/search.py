"""hydra/sweeper=optuna, the parts that are Optuna's: the search space read from Hydra's override
grammar, the sampler and pruner a config names, and, inside a job, the trial it is, to which the run
reports its validation value at every evaluation so the pruner can stop it early.

The sweeper (hydra_plugins/backprop_lab_launchers/optuna_search.py) asks Optuna for trials and
tells it their outcomes; it passes each job its trial through `hydra.job.env_set` (TRIAL_ENV).
Optuna is imported only by a search.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

from backprop_lab.errors import ConfigError

TRIAL_ENV = "BACKPROP_LAB_OPTUNA_TRIAL"  # a job's trial id, set by the sweeper
SAMPLERS = {"tpe": "TPESampler", "random": "RandomSampler", "qmc": "QMCSampler", "gp": "GPSampler"}
PRUNERS = {
    "none": "NopPruner",
    "median": "MedianPruner",  # stop a trial whose value is worse than the median of earlier trials at that step
    "hyperband": "HyperbandPruner",
    "successive_halving": "SuccessiveHalvingPruner",
    "percentile": "PercentilePruner",  # (needs pruner_kwargs.percentile)
}
ACTIVE_STUDIES: dict[str, Any] = {}  # studies this process holds in memory (storage: null), by name


def search_space(arguments: list[str]) -> tuple[dict[str, Any], list[str]]:
    """Hydra overrides -> (Optuna distributions by key, the fixed overrides). `choice(a,b)` is
    categorical, `range(lo,hi[,step])` its values, `interval(lo,hi)` continuous (`int(interval(lo,hi))`
    integer), `tag(log, interval(...))` on a log scale; anything else is a fixed value."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import IntervalSweep, Transformer
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    space: dict[str, Any] = {}
    fixed: dict[str, str] = {}
    for override in OverridesParser.create().parse_overrides(arguments):
        key = override.get_key_element()
        space.pop(key, None), fixed.pop(key, None)  # the command line wins over hydra.sweeper.params
        if not override.is_sweep_override():
            fixed[key] = override.input_line or f"{key}={override.get_value_element_as_str()}"
            continue
        value = override.value()
        if isinstance(value, IntervalSweep):
            low, high, log = value.start, value.end, "log" in value.tags
            both_int = isinstance(low, int) and isinstance(high, int)
            space[key] = (
                IntDistribution(int(low), int(high), log=log) if both_int else FloatDistribution(low, high, log=log)  # type: ignore[arg-type]
            )
            continue
        values: list[Any] = list(override.sweep_iterator(transformer=Transformer.encode))  # choice / range
        integers = all(isinstance(v, int) for v in values)
        steps: set[int] = {b - a for a, b in zip(values, values[1:], strict=False)} if integers else set()
        if override.is_range_sweep() and len(steps) == 1 and len(values) > 1:
            space[key] = IntDistribution(values[0], values[-1], step=steps.pop())
        else:
            space[key] = CategoricalDistribution(values)
    return space, list(fixed.values())


def override_value(value: Any) -> str:
    """A trial's parameter value as Hydra's command line writes it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def make_sampler(name: str, seed: int | None) -> Any:
    import optuna

    if name not in SAMPLERS:
        raise ConfigError("hydra.sweeper.sampler.name", name, f"choose one of: {', '.join(SAMPLERS)}")
    with warnings.catch_warnings():  # (QMCSampler is marked experimental)
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return getattr(optuna.samplers, SAMPLERS[name])(seed=seed)


def qmc_points(space: dict[str, Any], seed: int | None, start: int, count: int) -> list[dict[str, Any]]:
    """Points start .. start+count-1 of Optuna's scrambled Sobol sequence over `space` (QMCSampler's own
    draws). Asked one at a time, a QMCSampler draws its study's first trial at random, before any trial
    tells it the space, and so every trial of a batch asked at once; here one finished trial tells it
    first, in a study of its own, and the sweeper enqueues the points."""
    import optuna
    from optuna.distributions import CategoricalDistribution
    from optuna.trial import create_trial

    if count <= 0:
        return []
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # (not a line per study made here)
    with warnings.catch_warnings():  # QMCSampler is marked experimental; its draws are what is used
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = optuna.samplers.QMCSampler(scramble=True, seed=seed, warn_independent_sampling=False)
    study = optuna.create_study(sampler=sampler)
    known = {k: d.choices[0] if isinstance(d, CategoricalDistribution) else d.low for k, d in space.items()}
    study.add_trial(create_trial(params=known, distributions=space, value=0.0))
    points = []
    for _ in range(start + count):
        trial = study.ask(space)
        study.tell(trial, 0.0)
        points.append(trial.params)
    return points[start:]


def make_pruner(name: str, kwargs: dict[str, Any]) -> Any:
    import optuna

    if name not in PRUNERS:
        raise ConfigError("hydra.sweeper.pruner", name, f"choose one of: {', '.join(PRUNERS)}")
    try:
        return getattr(optuna.pruners, PRUNERS[name])(**kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError("hydra.sweeper.pruner_kwargs", kwargs, f"{PRUNERS[name]} refuses them: {err}") from None


def trial_of_job(hydra_config: Any) -> dict[str, Any] | None:
    """The Optuna trial the running job is, when its study prunes (None otherwise)."""
    trial_id = hydra_config.job.env_set.get(TRIAL_ENV)
    sweeper = hydra_config.sweeper
    if trial_id is None or str(sweeper.get("pruner", "none")) == "none":
        return None
    from omegaconf import OmegaConf

    given = sweeper.get("pruner_kwargs")
    kwargs = OmegaConf.to_container(given, resolve=True) if OmegaConf.is_config(given) else dict(given or {})
    return {
        "id": int(trial_id),
        "study": str(sweeper.study_name),
        "storage": None if sweeper.storage is None else str(sweeper.storage),
        "pruner": str(sweeper.pruner),
        "pruner_kwargs": kwargs,
    }


def open_trial(trial: dict[str, Any]) -> Any:
    """The optuna.trial.Trial a job reports to: the sweeper's own study in this process, or the study
    loaded from the shared storage (a job in another process or on another machine)."""
    import optuna

    if trial["storage"] is None:
        study = ACTIVE_STUDIES.get(trial["study"])
        if study is None:
            raise ConfigError(
                "hydra.sweeper.storage",
                None,
                "a pruned search whose trials run in other processes needs a shared study: "
                "set hydra.sweeper.storage=sqlite:///study.db",
            )
    else:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        pruner = make_pruner(trial["pruner"], trial["pruner_kwargs"])
        study = optuna.load_study(study_name=trial["study"], storage=trial["storage"], pruner=pruner)
    return optuna.trial.Trial(study, trial["id"])


class TrialReporter:
    """A tracker (trackers.attach) that reports the monitored validation value of the run's last stage
    to its trial at every evaluation, and asks the run to stop (`stop`) when the pruner says so."""

    def __init__(self, trial: dict[str, Any], monitor: str) -> None:
        self.trial = open_trial(trial)
        self.key = monitor.split("/", 1)[1]  # val/acc -> acc
        self.stop: str | None = None

    def metrics(self, row: dict[str, Any]) -> None:
        if row.get("split") != "val" or row.get("stage") == "pretrain":
            return
        value = row.get(self.key)
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            return
        self.trial.report(float(value), int(row["step"]))
        if self.trial.should_prune():
            self.stop = "pruned"

    def finish(self, summary: dict[str, Any], params: dict[str, Any]) -> None:
        """(The sweeper tells Optuna the trial's outcome.)"""
