"""The `backprop-lab` command: subcommands in front of Hydra's own command line.

`backprop-lab train ...` hands everything after `train` to the Hydra app (run/app.py), so `-m`, `--cfg`,
`--info`, `--config-dir` and overrides work as in any Hydra app. torch is imported only inside a run.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from backprop_lab.groups import group_options
from backprop_lab.run.app import finish_ranks, launch, on_signals, scratch_for_other_ranks

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
    from backprop_lab.run.sweep_resume import is_sweep

    if is_sweep(Path(args[0])):
        return resume_sweep(Path(args[0]), retry_failed)
    import logging

    from backprop_lab.errors import RefusedError
    from backprop_lab.run.training import resume

    run_dir = Path(args[0])
    if not run_dir.is_dir():
        print(f"error: RUN_DIR={run_dir} is not a folder; give the run folder of an interrupted run", file=sys.stderr)
        return 2
    if (run_dir / "optimization_results.yaml").is_file():  # (our Optuna sweeper's folder has no multirun.yaml)
        print(
            f"error: RUN_DIR={run_dir} is not valid: it is an Optuna search, whose sweeper chooses its jobs as it "
            "goes; resume its runs one by one (backprop-lab resume RUN_DIR), or continue the search by running it "
            "again with hydra.sweeper.storage",
            file=sys.stderr,
        )
        return 2
    from backprop_lab.run.folder_lock import hold, holder_problem
    from backprop_lab.run.training import resumable

    scratch = scratch_for_other_ranks()
    try:
        busy = holder_problem(run_dir)  # (first: a folder another process trains says so, whatever it holds)
        if busy:
            raise RefusedError(busy)
        resumable(run_dir)  # read only: a folder that cannot be resumed gets no .lock and no train.log
        if scratch is None:  # (rank 0 alone holds the folder under torchrun)
            hold(run_dir)  # before the log is opened: a folder another process trains is left untouched
    except RefusedError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    handler = logging.FileHandler(run_dir / "train.log")
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.INFO)
    on_signals()
    if scratch is not None:  # torchrun's other ranks continue from a copy; rank 0 owns the folder
        import shutil

        run_dir = Path(shutil.copytree(run_dir, scratch / "run", ignore=shutil.ignore_patterns("weights", "*.tmp")))
    try:
        summary = resume(run_dir)
    except RefusedError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        from backprop_lab.engine.interrupts import message

        print(message(err), file=sys.stderr)
        return 130
    finally:
        finish_ranks(scratch)
    return 0 if summary["status"] == "completed" else 1


def resume_sweep(sweep_dir: Path, retry_failed: bool) -> int:
    """`backprop-lab resume SWEEP_DIR`: the recorded sweep launched again into its folder, where each job
    keeps, resumes or starts (sweep_resume). Prints what it will do, then how the sweep stands."""
    from backprop_lab.errors import RefusedError
    from backprop_lab.run.folder_lock import hold
    from backprop_lab.run.sweep_resume import RESUME_ENV, outcome, plan, sweep_argv, verify

    try:
        argv = sweep_argv(sweep_dir)
        problem = verify(sweep_dir, argv)
        if problem:
            raise RefusedError(problem)
        hold(sweep_dir)  # one resume of a sweep at a time (the lock ends with this process)
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
    import logging

    logging.raiseExceptions = (
        False  # a log that cannot be written (a full disk) prints no traceback: the run's line says it
    )
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
        from backprop_lab.run import gc_pause

        gc_pause.pause()  # (until the first run's plans are built; the process ends with the command)
    if command == "compare":
        from backprop_lab.lab.compare import main as compare_main

        sys.exit(compare_main(rest))
    if command == "study":
        from backprop_lab.lab.studies.command import main as study_main

        sys.exit(study_main(rest))
    if command == "report":
        from backprop_lab.lab.report import main as report_main

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
    if rest[:1] in (["-sc"], ["--shell-completion"]):  # tab completion: backprop_lab.completion
        from backprop_lab.completion import handle

        try:
            text, query = handle(rest[1] if len(rest) > 1 else "")
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        if query is None:
            print(text, end="")
            return 0
        rest = query
    return launch(rest)
