"""The Hydra app of `backprop-lab train`: one run into Hydra's output folder, or a job of a sweep.

`launch(args)` runs it in this process (the command line, the studies' sweeps); what its runs came to
is read through `outcomes()` (the CLI's exit status, `backprop_lab.train`'s summary), never through
module variables. The vectorized launcher reads a job through `current_job`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import hydra
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from backprop_lab.groups import GROUPS
from backprop_lab.run.job_check import precheck

OmegaConf.register_new_resolver(
    "monitor_direction", lambda monitor: "minimize" if str(monitor).endswith("loss") else "maximize", replace=True
)

# Outcomes of the runs of this process (a sweep runs its jobs here, one after another).


@dataclass
class Outcomes:
    """What the runs of this process came to (a sweep runs its jobs here, one after another)."""

    unfinished: list[tuple[str, str]] = field(default_factory=list)  # (run folder, status)
    refused: bool = False  # a run was refused (bad input)
    last_summary: dict[str, Any] | None = None  # the summary of the last run train_app ran

    def reset(self) -> None:
        self.unfinished.clear()
        self.refused, self.last_summary = False, None


_OUTCOMES = Outcomes()


def outcomes() -> Outcomes:
    """The outcomes of the runs this process has launched since the last `reset()`."""
    return _OUTCOMES


def current_job(cfg: DictConfig) -> Any:
    """The job Hydra is running now (inside a task function): config, folder, choices, overrides."""
    from hydra.core.hydra_config import HydraConfig

    from backprop_lab.run.training import Job

    hc = HydraConfig.get()
    choices = {g: str(hc.runtime.choices.get(g)) for g in GROUPS if hc.runtime.choices.get(g) is not None}
    for group in ("regularizer", "logger"):  # Hydra records no list choice such as regularizer=[l2,dropout]
        if group not in choices:
            picked = [o.split("=", 1)[1] for o in hc.overrides.task if o.startswith(f"{group}=")]
            choices[group] = picked[-1] if picked else "none"
    from hydra.types import RunMode

    from backprop_lab.run.search import trial_of_job

    sweep_dir = str(hc.sweep.dir) if hc.mode == RunMode.MULTIRUN else None
    run_dir, overrides = Path(hc.runtime.output_dir), list(hc.overrides.task)
    return Job(cfg, run_dir, choices, overrides, sweep_dir, trial_of_job(hc), applied_recipe(hc))


def applied_recipe(hc: Any) -> str | None:
    """The recipe train.yaml applied (`optional recipe: ${model}_${data}_${optimizer}`), or None: Hydra
    records the name it looked for whether or not such a file exists in a config source."""
    name = hc.runtime.choices.get("recipe")
    if not name:
        return None
    for source in hc.runtime.config_sources:
        if source.schema == "pkg" and source.path:
            try:
                found = (resources.files(source.path) / "recipe" / f"{name}.yaml").is_file()
            except (ModuleNotFoundError, TypeError):
                found = False
        elif source.schema == "file":
            found = (Path(source.path) / "recipe" / f"{name}.yaml").is_file()
        else:
            found = False
        if found:
            return str(name)
    return None


def run_value(summary: dict[str, Any]) -> float | None:
    """A run's best validation value by trainer.monitor, what a sweeper optimises (None: unfinished)."""
    if summary["status"] != "completed":
        return None
    return summary["metrics"].get(summary.get("monitor", "val/acc"))


def job_outcome(summary: dict[str, Any]) -> float | None:
    """What a job returns to Hydra (a sweeper optimises it): the best validation value, or None for a
    run that did not complete (the Optuna sweeper reads its status from summary.json). An unfinished
    single run is remembered for the exit status (a sweep's, by SweepOutcomes)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if summary["status"] != "completed" and HydraConfig.get().mode == RunMode.RUN:
        outcomes().unfinished.append((summary["run_dir"], summary["status"]))
        outcomes().refused = bool(summary.get("refused"))
    return run_value(summary)


class SweepOutcomes(Callback):
    """Reads the summary.json of every job of a sweep when it ends, in the launching process, so the
    exit status counts failed jobs whatever launcher ran them (in this process, joblib's workers, SLURM)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.started = time.time()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        import json
        from datetime import datetime

        from backprop_lab.console import show_jobs

        jobs = []
        for path in sorted(Path(str(config.hydra.sweep.dir)).glob("**/summary.json")):
            try:
                summary = json.loads(path.read_text())
                started = datetime.fromisoformat(summary["started_at"]).timestamp()
            except (OSError, ValueError, KeyError):
                continue
            jobs.append(summary)  # (a resumed sweep's kept and resumed jobs too)
            if started >= int(self.started) and summary.get("status") not in ("completed", "pruned"):
                outcomes().unfinished.append((str(path.parent), summary.get("status", "unknown")))
        if len(jobs) > 1:  # the sweep's jobs side by side, with the overrides in which they differ
            jobs.sort(key=lambda s: (len(Path(s["run_dir"]).name), Path(s["run_dir"]).name))
            show_jobs(jobs, f"sweep: {len(jobs)} jobs in {config.hydra.sweep.dir}", folder="job")


@hydra.main(config_path="../configs", config_name="train", version_base="1.3")
def train_app(cfg: DictConfig) -> float | None:
    """The Hydra task function: one run into Hydra's output folder; returns the best validation value."""
    from backprop_lab.run.preemption import run_job as run_submitit_job
    from backprop_lab.run.preemption import under_submitit
    from backprop_lab.run.sweep_resume import finish_job, resuming
    from backprop_lab.run.training import run_members

    job = current_job(cfg)
    if resuming():  # backprop-lab resume SWEEP_DIR
        summary = finish_job(job)
    elif under_submitit():  # a cluster job, perhaps requeued after a preemption
        summary = run_submitit_job(job)
    else:
        summary = run_members([job])[0]
    outcomes().last_summary = summary
    return job_outcome(summary)


def on_signals() -> None:
    """Ctrl-C and a scheduler's SIGTERM: the training loop finishes its step and checkpoints first."""
    from backprop_lab.engine.interrupts import handle

    signal.signal(signal.SIGINT, handle)
    signal.signal(signal.SIGTERM, handle)


def scratch_for_other_ranks() -> Path | None:
    """Under torchrun, rank 0 alone writes the run folder: the other ranks are sent to a scratch
    folder (removed at exit) and print nothing. None on rank 0 and outside torchrun (where
    distributed.py, which imports torch, is not even imported)."""
    import tempfile

    if "WORLD_SIZE" not in os.environ:
        return None
    from backprop_lab.engine.distributed import from_environment

    world = from_environment()
    if world.main:
        return None
    from backprop_lab.console import console, err_console

    console.quiet = err_console.quiet = True
    return Path(tempfile.mkdtemp(prefix=f"backprop-lab-rank{world.rank}-"))


def finish_ranks(scratch: Path | None) -> None:
    import shutil

    if "torch.distributed" in sys.modules:
        from backprop_lab.engine.distributed import stop

        stop()
    if scratch is not None:
        shutil.rmtree(scratch, ignore_errors=True)


def remove_refused(run_dir: Path) -> None:
    """The folder of a run this process refused (its summary.json says so: never a folder another
    process holds), and the folders above it, up to the working directory, that are left empty."""
    import json
    import shutil

    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return
    if summary.get("refused") and summary.get("status") == "failed" and not summary.get("resumed"):
        shutil.rmtree(run_dir, ignore_errors=True)
        here = Path.cwd()
        for parent in run_dir.absolute().parents:  # outputs/DATE and outputs, when Hydra made them for this run
            if parent == here or here not in parent.parents:
                break
            with contextlib.suppress(OSError):
                parent.rmdir()  # (only when empty)


def launch(rest: list[str]) -> int:
    """`backprop-lab train REST` in this process, after the checks that need no Hydra (precheck): one
    run or a sweep; returns the exit status and leaves what the runs came to in `outcomes()`."""
    outcomes().reset()
    problem = None if rest[:1] == ["-sc"] else precheck(rest)  # (a completion query: Hydra answers it)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    scratch = scratch_for_other_ranks()
    if scratch is not None:
        rest = [*rest, f"hydra.run.dir={scratch}/run", f"hydra.sweep.dir={scratch}/sweep"]
    saved_argv, sys.argv = sys.argv, [sys.argv[0], *rest]
    from backprop_lab.plugin_configs import register

    register()
    import logging

    logging.getLogger("alembic").setLevel(logging.WARNING)  # (Optuna's and MLflow's SQL stores: a line per migration)
    on_signals()
    try:
        train_app()
    except KeyboardInterrupt as err:
        from backprop_lab.engine.interrupts import message

        print(message(err), file=sys.stderr)
        return 130
    finally:
        sys.argv = saved_argv
        finish_ranks(scratch)
    done = outcomes()
    if scratch is not None and done.refused:
        # torchrun's other ranks: rank 0 refuses the same settings and says so; exiting non-zero first
        # would have torchrun kill rank 0 before it could
        return 0
    multirun = "-m" in rest or "--multirun" in rest
    if done.refused and not multirun and len(done.unfinished) == 1:  # refused once its data was known
        remove_refused(Path(done.unfinished[0][0]))
        return 2
    if done.unfinished:
        if len(done.unfinished) > 1 or multirun:
            print(f"{len(done.unfinished)} run(s) did not complete:", file=sys.stderr)
            for run_dir, status in done.unfinished:
                print(f"  {status:<11} {run_dir}", file=sys.stderr)
        return 1
    return 0
