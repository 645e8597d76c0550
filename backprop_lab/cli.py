"""The `backprop-lab` command: subcommands in front of Hydra's own command line.

`backprop-lab train ...` hands everything after `train` to a Hydra app, so `-m`, `--cfg`, `--info`,
`--config-dir` and overrides work as in any Hydra app. torch is imported only inside a run.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from importlib import resources
from pathlib import Path
from typing import Any

import hydra
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from .job_check import check_jobs, compose_train  # noqa: F401 (compose_train: the studies')

GROUPS = (
    "data",
    "model",
    "act",
    "regularizer",
    "optimizer",
    "scheduler",
    "pretrain",
    "trainer",
    "logger",
    "experiment",
)
USAGE = """\
usage: backprop-lab COMMAND [ARGS...]

Train and compare the techniques that make backpropagation work, from YAML configs.

commands:
  train [OVERRIDES...]   train one run, or a sweep with -m (every Hydra option works: --cfg job, --info, ...)
  resume RUN_DIR         continue an interrupted or killed run from its last checkpoint, in its folder
  compare PATH...        one row per setting with seeds pooled: n, mean ± std, 95% CI (compare --help)
  report PATH            report.md and PNG plots (learning curves, gradient norms per layer, gap)
  study NAME             a study's sweeps, then its report with a computed verdict:
                         activations, regularization, optimizers, pretraining

examples:
  backprop-lab train                                         MNIST-1D, MLP, relu, adam
  backprop-lab train optimizer=sgd act=tanh seed=1
  backprop-lab train -m optimizer=sgd,adam act=relu,sigmoid seed=0,1,2
  backprop-lab train 'regularizer=[l2,dropout]' regularizer.dropout=0.3
  backprop-lab train --cfg job                               print the composed config, train nothing
  backprop-lab train --help                                  the config groups and their options
  backprop-lab compare multirun/ --metric test/acc --format markdown
  backprop-lab train logger=mlflow                           also an MLflow run (mlflow ui; docs/tracking.md)
  backprop-lab train -m hydra/sweeper=optuna hydra.sweeper.pruner=median   an Optuna search, bad trials pruned
  eval "$(backprop-lab train --shell-completion install=bash)"             tab completion (zsh, fish too)
  backprop-lab study activations --setting real data.root=DIR   the claim on MNIST too (docs/studies.md)

config groups (group=option):
{groups}
Runs go to outputs/DATE/TIME/ (sweeps: multirun/DATE/TIME/N/): config, metrics.jsonl, summary.json, weights,
checkpoints.
"""

# hydra/sweeper=optuna's direction follows trainer.monitor (registered wherever the CLI's task runs)
OmegaConf.register_new_resolver(
    "monitor_direction", lambda monitor: "minimize" if str(monitor).endswith("loss") else "maximize", replace=True
)

# Outcomes of the runs of this process (a sweep runs its jobs here, one after another).
_unfinished: list[tuple[str, str]] = []
_refused = False  # a run of this process was refused (bad input)
last_summary: dict[str, Any] | None = None  # the summary of the last run train_app ran (for api.train)


def group_options() -> dict[str, list[str]]:
    """The options of every config group, read from the configs shipped in the package."""
    root = resources.files("backprop_lab.configs")
    return {g: sorted(p.name[:-5] for p in (root / g).iterdir() if p.name.endswith(".yaml")) for g in GROUPS}


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
    return check_jobs(parsed.overrides, parsed.multirun, GROUPS, parsed.config_dir)


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
        from .folder_lock import holder_problem

        return holder_problem(folder)
    return None


def current_job(cfg: DictConfig) -> Any:
    """The job Hydra is running now (inside a task function): config, folder, choices, overrides."""
    from hydra.core.hydra_config import HydraConfig

    from .training import Job

    hc = HydraConfig.get()
    choices = {g: str(hc.runtime.choices.get(g)) for g in GROUPS if hc.runtime.choices.get(g) is not None}
    for group in ("regularizer", "logger"):  # Hydra records no list choice such as regularizer=[l2,dropout]
        if group not in choices:
            picked = [o.split("=", 1)[1] for o in hc.overrides.task if o.startswith(f"{group}=")]
            choices[group] = picked[-1] if picked else "none"
    from hydra.types import RunMode

    from .search import trial_of_job

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
        global _refused
        _unfinished.append((summary["run_dir"], summary["status"]))
        _refused = bool(summary.get("refused"))
    return run_value(summary)


class SweepOutcomes(Callback):
    """Reads the summary.json of every job of a sweep when it ends, in the launching process, so the
    exit status counts failed jobs whatever launcher ran them (in this process, joblib's workers, SLURM)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.started = time.time()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        import json
        from datetime import datetime

        from .console import show_jobs

        jobs = []
        for path in sorted(Path(str(config.hydra.sweep.dir)).glob("**/summary.json")):
            try:
                summary = json.loads(path.read_text())
                started = datetime.fromisoformat(summary["started_at"]).timestamp()
            except (OSError, ValueError, KeyError):
                continue
            jobs.append(summary)  # (a resumed sweep's kept and resumed jobs too)
            if started >= int(self.started) and summary.get("status") not in ("completed", "pruned"):
                _unfinished.append((str(path.parent), summary.get("status", "unknown")))
        if len(jobs) > 1:  # the sweep's jobs side by side, with the overrides in which they differ
            jobs.sort(key=lambda s: (len(Path(s["run_dir"]).name), Path(s["run_dir"]).name))
            show_jobs(jobs, f"sweep: {len(jobs)} jobs in {config.hydra.sweep.dir}", folder="job")


@hydra.main(config_path="configs", config_name="train", version_base="1.3")
def train_app(cfg: DictConfig) -> float | None:
    """The Hydra task function: one run into Hydra's output folder; returns the best validation value."""
    from .preemption import run_job as run_submitit_job
    from .preemption import under_submitit
    from .sweep_resume import finish_job, resuming
    from .training import run_members

    global last_summary
    job = current_job(cfg)
    if resuming():  # backprop-lab resume SWEEP_DIR
        last_summary = finish_job(job)
    elif under_submitit():  # a cluster job, perhaps requeued after a preemption
        last_summary = run_submitit_job(job)
    else:
        last_summary = run_members([job])[0]
    return job_outcome(last_summary)


def _on_signals() -> None:
    """Ctrl-C and a scheduler's SIGTERM: the training loop finishes its step and checkpoints first."""
    from .interrupts import handle

    signal.signal(signal.SIGINT, handle)
    signal.signal(signal.SIGTERM, handle)


def _scratch_for_other_ranks() -> Path | None:
    """Under torchrun, rank 0 alone writes the run folder: the other ranks are sent to a scratch
    folder (removed at exit) and print nothing. None on rank 0 and outside torchrun (where
    distributed.py, which imports torch, is not even imported)."""
    import os
    import tempfile

    if "WORLD_SIZE" not in os.environ:
        return None
    from .distributed import from_environment

    world = from_environment()
    if world.main:
        return None
    from .console import console, err_console

    console.quiet = err_console.quiet = True
    return Path(tempfile.mkdtemp(prefix=f"backprop-lab-rank{world.rank}-"))


def _finish_ranks(scratch: Path | None) -> None:
    import shutil

    if "torch.distributed" in sys.modules:
        from .distributed import stop

        stop()
    if scratch is not None:
        shutil.rmtree(scratch, ignore_errors=True)


def _remove_refused(run_dir: Path) -> None:
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


def resume_main(args: list[str]) -> int:
    retry_failed = "--retry-failed" in args
    args = [a for a in args if a != "--retry-failed"]
    if len(args) != 1 or args[0].startswith("-"):
        print(
            "usage: backprop-lab resume RUN_DIR   (continue an interrupted run from its last checkpoint)\n"
            "       backprop-lab resume [--retry-failed] SWEEP_DIR   (finish a sweep: keep what completed, resume\n"
            "       what was interrupted, start what never ran; --retry-failed: failed and diverged jobs too)",
            file=sys.stderr,
        )
        return 2
    from .sweep_resume import is_sweep

    if is_sweep(Path(args[0])):
        return resume_sweep(Path(args[0]), retry_failed)
    import logging

    from .errors import RefusedError
    from .training import resume

    run_dir = Path(args[0])
    if not run_dir.is_dir():
        print(f"error: RUN_DIR={run_dir} is not a folder; give the run folder of an interrupted run", file=sys.stderr)
        return 2
    from .folder_lock import hold

    scratch = _scratch_for_other_ranks()
    try:
        if scratch is None:  # (rank 0 alone holds the folder under torchrun)
            hold(run_dir)  # before the log is opened: a folder another process trains is left untouched
    except RefusedError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    handler = logging.FileHandler(run_dir / "train.log")
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.INFO)
    _on_signals()
    if scratch is not None:  # torchrun's other ranks continue from a copy; rank 0 owns the folder
        import shutil

        run_dir = Path(shutil.copytree(run_dir, scratch / "run", ignore=shutil.ignore_patterns("weights", "*.tmp")))
    try:
        summary = resume(run_dir)
    except RefusedError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        from .interrupts import message

        print(message(err), file=sys.stderr)
        return 130
    finally:
        _finish_ranks(scratch)
    return 0 if summary["status"] == "completed" else 1


def resume_sweep(sweep_dir: Path, retry_failed: bool) -> int:
    """`backprop-lab resume SWEEP_DIR`: the recorded sweep launched again into its folder, where each job
    keeps, resumes or starts (sweep_resume). Prints what it will do, then how the sweep stands."""
    from .errors import RefusedError
    from .sweep_resume import RESUME_ENV, outcome, plan, sweep_argv

    try:
        argv = sweep_argv(sweep_dir)
    except RefusedError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    before = plan(sweep_dir)
    shown = {"keep": "keeping", "resume": "resuming", "start": "starting again"}
    for todo, jobs in before.items():
        if jobs:
            print(f"{shown[todo]}: {' '.join('#' + j for j in jobs)}")
    print("starting: the jobs that have no folder yet")
    os.environ[RESUME_ENV] = "retry-failed" if retry_failed else "keep-failed"
    try:
        code = train_main(argv)
    finally:
        del os.environ[RESUME_ENV]
    print(outcome(sweep_dir, before))
    return code


def main(argv: list[str] | None = None) -> None:
    """The console command. Given `argv` (a caller in its own process: a test), it leaves Python's
    garbage collector alone; as the command's own process it pauses it during start-up (gc_pause)."""
    own_process = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        groups = "".join(f"  {g:<12} {', '.join(opts)}\n" for g, opts in group_options().items())
        print(USAGE.format(groups=groups), end="")
        return
    if argv[0] == "--version":
        from importlib.metadata import version

        print(f"backprop-lab {version('backprop-lab')}")
        return
    command, rest = argv[0], argv[1:]
    if own_process and command in ("train", "resume", "study"):
        from . import gc_pause

        gc_pause.pause()  # (until the first run's plans are built; the process ends with the command)
    if command == "compare":
        from .compare import main as compare_main

        sys.exit(compare_main(rest))
    if command == "study":
        from .studies import main as study_main

        sys.exit(study_main(rest))
    if command == "report":
        from .report import main as report_main

        sys.exit(report_main(rest))
    if command == "resume":
        sys.exit(resume_main(rest))
    if command != "train":
        print(
            f"error: unknown command '{command}'; commands: train, resume, compare, report, study "
            "(see backprop-lab --help)",
            file=sys.stderr,
        )
        sys.exit(2)
    sys.exit(train_main(rest))


def train_main(rest: list[str]) -> int:
    """`backprop-lab train REST`: one run or a sweep, in this process; returns the exit status."""
    global _refused
    _unfinished.clear()
    _refused = False
    if rest[:1] in (["-sc"], ["--shell-completion"]):  # tab completion: backprop_lab.completion
        from .completion import handle

        try:
            text, query = handle(rest[1] if len(rest) > 1 else "")
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        if query is None:
            print(text, end="")
            return 0
        rest = query
    problem = None if rest[:1] == ["-sc"] else precheck(rest)  # (a completion query: Hydra answers it)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    scratch = _scratch_for_other_ranks()
    if scratch is not None:
        rest = [*rest, f"hydra.run.dir={scratch}/run", f"hydra.sweep.dir={scratch}/sweep"]
    saved_argv, sys.argv = sys.argv, [sys.argv[0], *rest]
    from .plugin_configs import register

    register()
    import logging

    logging.getLogger("alembic").setLevel(logging.WARNING)  # (Optuna's and MLflow's SQL stores: a line per migration)
    _on_signals()
    try:
        train_app()
    except KeyboardInterrupt as err:
        from .interrupts import message

        print(message(err), file=sys.stderr)
        return 130
    finally:
        sys.argv = saved_argv
        _finish_ranks(scratch)
    if scratch is not None and _refused:
        # torchrun's other ranks: rank 0 refuses the same settings and says so; exiting non-zero first
        # would have torchrun kill rank 0 before it could
        return 0
    multirun = "-m" in rest or "--multirun" in rest
    if _refused and not multirun and len(_unfinished) == 1:  # refused once its data was known: no folder either
        _remove_refused(Path(_unfinished[0][0]))
        return 2
    if _unfinished:
        if len(_unfinished) > 1 or multirun:
            print(f"{len(_unfinished)} run(s) did not complete:", file=sys.stderr)
            for run_dir, status in _unfinished:
                print(f"  {status:<11} {run_dir}", file=sys.stderr)
        return 1
    return 0
