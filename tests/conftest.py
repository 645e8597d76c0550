"""Shared helpers: compose configs the way the CLI does and run them into tmp_path."""

from __future__ import annotations

import os
from pathlib import Path

# Under pytest-xdist (pyproject's addopts: `-n auto`), the workers share the cores:
# each worker, and every process it starts, gets its share of torch threads instead of all of them.
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    _share = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ.setdefault("OMP_NUM_THREADS", str(_share))

import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra

from backprop_lab.groups import GROUPS
from backprop_lab.run.training import run

FAST = [
    "data=synthetic",
    "trainer=smoke",
    "trainer.max_steps=6",
    "trainer.eval_every=3",
    "trainer.log_every=2",
    "trainer.progress=off",
]


def make_cfg(*overrides: str):
    """The composed config of `backprop-lab train OVERRIDES`, from the configs shipped in the package."""
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="backprop_lab.configs", version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


def run_cfg(run_dir: Path, *overrides: str) -> dict:
    cfg = make_cfg(*overrides)
    choices = {g: str(cfg[g].get("name", "")) for g in GROUPS if g in cfg}
    return run(cfg, run_dir, choices, list(overrides))


@pytest.fixture
def train(tmp_path):
    """train(*overrides) -> (summary, run_dir): a small real run in its own folder under tmp_path."""
    count = iter(range(1000))

    def _train(*overrides: str):
        run_dir = tmp_path / f"run{next(count)}"
        return run_cfg(run_dir, *FAST, *overrides), run_dir

    return _train


class Quiet:
    """A progress display that shows nothing (for engine.fit called directly)."""

    def start_stage(self, *a):
        pass

    def update(self, *a):
        pass

    def end_stage(self):
        pass


class Rows:
    """A run log that keeps the metric rows in memory."""

    def __init__(self):
        self.rows = []

    def metrics(self, **row):
        self.rows.append(row)

    def stop_requested(self):
        return None


def sweep_here(folder: Path, *args: str) -> Path:
    """`backprop-lab train -m ARGS` into `folder`, run in this process (no child process to start)."""
    from backprop_lab.cli import train_main

    assert train_main(["-m", *args, f"hydra.sweep.dir={folder}"]) == 0
    return folder


def sweep_printed(capfd: pytest.CaptureFixture[str], folder: Path, *args: str) -> tuple[int, str]:
    """The same sweep in this process: its exit status and what it printed (stdout, then stderr)."""
    from backprop_lab.cli import train_main

    capfd.readouterr()
    status = train_main(["-m", *args, f"hydra.sweep.dir={folder}"])
    printed = capfd.readouterr()
    return status, printed.out + printed.err


@pytest.fixture(scope="session")
def real_sweep(tmp_path_factory) -> Path:
    """A real sweep, act=sigmoid,relu x seed=0,1 (12 steps each), for the tests that read run folders:
    made once per test worker."""
    return sweep_here(tmp_path_factory.mktemp("real") / "sweep", "data=synthetic", "trainer=smoke",
                      "trainer.max_steps=12", "trainer.eval_every=4", "trainer.log_every=4", "trainer.progress=off",
                      "act=sigmoid,relu", "seed=0,1")  # fmt: skip
