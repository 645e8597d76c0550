"""What a study is: its claim, sweeps, verdict and settings (Setting, Study), and its protocol's sizes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from backprop_lab.lab.compare import Run

SEEDS = 5  # seeds per setting (--seeds); --smoke: 2


@dataclass(frozen=True)
class Setting:
    """Where a study measures its claim: a preset (configs/experiment/) and overrides for every sweep
    (pretrain.* ones only for the sweeps that pretrain)."""

    experiment: str
    description: str
    overrides: tuple[str, ...] = ()
    search_steps: int = 1000  # the optimizers study: steps of each learning-rate search run


class RunSweep(Protocol):
    """Runs one of a study's sweeps (`backprop-lab train -m ...` with these overrides) into the study's
    folder under `label`, and returns that folder; `note` is said beside its command in the report."""

    def __call__(self, label: str, overrides: list[str], note: str | None = None) -> Path: ...


@dataclass(frozen=True)
class Ruleset:
    """How much tuning each arm gets before its seeds are measured (--tuning), the same for every arm:
    oneshot (its YAML's defaults), lr (the learning-rate grid) or budget (`trials` quasirandom trials
    over the search space its YAML declares). docs/studies.md: what each follows."""

    name: str  # oneshot | lr | budget
    trials: int = 0  # budget's N

    @property
    def label(self) -> str:
        return f"budget:{self.trials}" if self.name == "budget" else self.name


ONESHOT = Ruleset("oneshot")


@dataclass(frozen=True)
class Plan:
    """One measurement of a study: where (`setting`), under which `ruleset`, with which `seeds` ("0,1,2"),
    in miniature (`smoke`) or not, with the `candidate` option (or None), and the validation accuracy
    its time-to-target reads (`target`; None: the study's default)."""

    setting: Setting
    ruleset: Ruleset = ONESHOT
    seeds: str = "0,1,2,3,4"
    smoke: bool = False
    candidate: str | None = None
    target: float | None = None
    target_source: str = "declared (--target)"  # where `target` came from, as the report says
    self_tuning: bool = False  # the optimizers study: the self-tuning arms join (--self-tuning)
    config_dir: Path | None = None  # the user's own options (--config-dir)
    folder: Path | None = None  # where its sweeps' folders are (a verdict's plots go there)
    link: str = ""  # that folder as report.md links to it ("" or "digits/lr/")


class Sweeps(Protocol):
    """A study's sweeps: each through `run_sweep`, as `plan` says."""

    def __call__(self, run_sweep: RunSweep, plan: Plan) -> None: ...


@dataclass
class Study:
    claim: str
    sweeps: Sweeps
    verdict: Callable[[list[Run], Plan], str]  # the report's verdict from the runs, under the plan they ran
    group: str | None  # the config group of a --candidate (None: the study takes none)
    real: Setting  # --setting real: the claim on a real image set
    arms: tuple[str, ...] = ()  # its options in the order its tables list them (others after)
    rulesets: tuple[str, ...] = ("oneshot",)  # the --tuning it takes (the first: its default)
    # the time-to-target a workload's sections share, from the runs of its most-tuned section (None: none)
    target: Callable[[list[Run]], float | None] | None = None


SETTINGS = ("mnist1d", "digits", "real")  # --setting / --settings

# --smoke: the same sweeps in miniature, for tests (a few steps on a small MNIST-1D)
SMOKE = ["trainer.max_steps=8", "trainer.eval_every=4", "trainer.log_every=4", "data.num_samples=1000"]
