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


class Sweeps(Protocol):
    """A study's sweeps: each through `run_sweep`, in miniature with `smoke`, with the `candidate`
    option (or None) and the `seeds` ("0,1,2,3,4"), where `setting` says."""

    def __call__(
        self, run_sweep: RunSweep, smoke: bool, candidate: str | None, seeds: str, setting: Setting
    ) -> None: ...


@dataclass
class Study:
    claim: str
    sweeps: Sweeps
    verdict: Callable[[list[Run], str | None], str]  # the report's verdict from the runs (and the candidate)
    group: str | None  # the config group of a --candidate (None: the study takes none)
    real: Setting  # --setting real: the claim on a real image set


SETTINGS = ("mnist1d", "real")  # --setting

# --smoke: the same sweeps in miniature, for tests (a few steps on a small MNIST-1D)
SMOKE = ["trainer.max_steps=8", "trainer.eval_every=4", "trainer.log_every=4", "data.num_samples=1000"]
