"""Running a study: its sweeps in this process with their progress, the checks before them, the report."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from backprop_lab.lab.compare import Run
from backprop_lab.lab.studies.registry import STUDIES, setting_of
from backprop_lab.lab.studies.study import SEEDS, SMOKE, Plan, Ruleset, RunSweep, Setting


def count_jobs(train_args: list[str]) -> int | None:
    """How many jobs `backprop-lab train -m TRAIN_ARGS` launches (Hydra's own expansion of the sweep)."""
    from backprop_lab.run.job_check import job_overrides

    overrides = [a for a in train_args if not a.startswith("-") and "=" in a]
    if "hydra/sweeper=optuna" in overrides:  # a search: its trials
        trials = [o.split("=", 1)[1] for o in overrides if o.startswith("hydra.sweeper.n_trials=")]
        return int(trials[-1]) if trials and trials[-1].isdigit() else None
    jobs = job_overrides(overrides, multirun=True)
    return len(jobs) if jobs is not None else None


class SweepProgress:
    """While a study's sweep runs in this process (its output going to a log): jobs done of the total,
    elapsed and an estimate, read from the jobs' summary.json every second, on a thread of its own. A
    bar on a terminal; elsewhere a line each time the count moves."""

    def __init__(self, label: str, folder: Path, total: int | None):
        import threading

        from rich.console import Console

        self.label, self.folder, self.total = label, folder, total
        self.console = Console(file=sys.stdout, highlight=False)  # (sys.stdout before the sweep's redirect)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def done(self) -> int:
        import json

        count = 0
        for path in self.folder.glob("*/summary.json"):
            try:
                count += json.loads(path.read_text()).get("status") != "running"
            except (OSError, ValueError):
                continue
        return count

    def line(self, done: int) -> str:
        elapsed = time.time() - self.started
        total = self.total or "?"
        left = (
            f", ~{elapsed / done * (self.total - done):.0f} s left" if done and self.total and done < self.total else ""
        )
        return f"{self.label}: {done}/{total} jobs done, {elapsed:.0f} s{left}"

    def _watch(self) -> None:
        shown = -1
        while not self.stop.wait(1.0):
            done = self.done()
            if self.bar is not None:
                self.bar.update(self.task, completed=done)
            elif done != shown:
                shown = done
                self.console.print(self.line(done), markup=False)

    def __enter__(self) -> SweepProgress:
        from rich.markup import escape
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.started = time.time()
        self.bar: Progress | None = None
        if self.console.is_terminal and self.total:  # a bar: jobs done of the total, elapsed, estimate
            columns = (TextColumn(escape(self.label)), BarColumn(), MofNCompleteColumn(), TextColumn("jobs"))
            self.bar = Progress(*columns, TimeElapsedColumn(), TimeRemainingColumn(), console=self.console)
            self.task = self.bar.add_task(self.label, total=self.total)
            self.bar.start()
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        self.thread.join()
        if self.bar is not None:
            self.bar.update(self.task, completed=self.done())
            self.bar.stop()
        else:
            self.console.print(self.line(self.done()).replace("jobs done", "jobs ended"), markup=False)


def show_summary(report: Path) -> None:
    """The end of a study on the terminal: its banner if a miniature, the claims' table of each of its
    sections (workload, ruleset, variant), the report's path."""
    from rich.table import Table
    from rich.text import Text

    from backprop_lab.console import console

    text = report.read_text()
    banner = [line.strip("> *") for line in text.splitlines() if line.startswith("> **miniature")]
    lines = text.splitlines()
    section = ""
    for i, line in enumerate(lines):
        if line.startswith("## "):
            section = f": {line[3:].lower()}"
        if not line.startswith("| claim | difference"):
            continue
        end = next((k for k in range(i, len(lines)) if not lines[k].startswith("|")), len(lines))
        table = Table(title=f"claims (Holm-adjusted p){section}", show_lines=False)
        for column in ("claim", "difference [95% CI]", "Holm p", "verdict"):
            table.add_column(column, justify="right" if column == "Holm p" else "left", overflow="fold")
        for claim in (row.strip("|").split(" | ") for row in lines[i + 2 : end]):  # (past the header, rule)
            table.add_row(*(Text(cell.strip().replace("**", "")) for cell in claim))
        console.print(table)
    for line in banner:
        console.print(line, markup=False)
    console.print(f"report: {report}", markup=False)


def _sweep_in_process(train_args: list[str], log_path: Path) -> int:
    """`backprop-lab train TRAIN_ARGS` in this process (no interpreter and torch start per sweep), its
    output into `log_path`; returns its exit status."""
    import contextlib
    import logging.config

    from backprop_lab.run.app import launch

    with open(log_path, "w") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        try:
            code = launch(train_args)
        except SystemExit as exit:  # Hydra's own errors end in sys.exit
            code = exit.code if isinstance(exit.code, int) else 1
        finally:  # Hydra's log handlers write to this file: close them with it
            logging.config.dictConfig({"version": 1, "disable_existing_loggers": False})
    return code


def candidate_problem(
    study: str, candidate: str, config_dir: Path | None, rulesets: Sequence[Ruleset] = ()
) -> str | None:
    """Why `--candidate GROUP=OPTION` cannot join this study, as one line; None when it can."""
    from backprop_lab.run.job_check import check_composition, compose_train

    group, _, option = candidate.partition("=")
    wanted = STUDIES[study].group
    if wanted is None:
        return f"--candidate: study {study} takes no candidate (activations, optimizers and regularization do)"
    if group != wanted or not option or "," in option:
        return f"--candidate={candidate} is not valid: study {study} takes one option of '{wanted}', e.g. {wanted}=mine"
    problem = check_composition(config_dir, [candidate])
    if problem:
        return f"--candidate={candidate}: {problem}"
    if study == "optimizers" and "lr" not in compose_train([candidate], config_dir).optimizer:
        return f"--candidate={candidate}: its YAML has no lr, which the optimizers study tunes (add lr: 0.001)"
    if any(r.name == "budget" for r in rulesets) and not compose_train([candidate], config_dir).optimizer.get("search"):
        return (
            f"--candidate={candidate}: --tuning budget:N draws its trials from the search space its YAML declares, "
            "and it declares none (add search: {lr: 'tag(log, interval(1e-4, 1e-1))'})"
        )
    return None


def setting_problem(name: str, setting: str, extra: list[str], config_dir: Path | None) -> str | None:
    """Why the study's runs cannot start, as one line, before any sweep: an override its config refuses
    (Hydra's message, or the value checks every run makes), or data files (and pretraining data) that
    cannot be read, naming data.root. Nothing is downloaded unless data.download=true. None: they can."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    from backprop_lab.data.datasets import load_arrays
    from backprop_lab.errors import RefusedError
    from backprop_lab.run.job_check import check_composition, compose_train
    from backprop_lab.run.training import registered_names
    from backprop_lab.run.validate import validate

    where = setting_of(name, setting)
    single = [
        o
        for o, p in zip(extra, OverridesParser.create().parse_overrides(extra), strict=True)
        if not p.is_sweep_override()
    ]  # fmt: skip  (a sweep of the user's own is the sweeps' to expand)
    overrides = [f"experiment={where.experiment}", *(["pretrain=supervised"] if name == "pretraining" else [])]
    overrides += [*where.overrides, *single]
    try:
        cfg = compose_train(overrides, config_dir)
    except Exception:  # Hydra's or OmegaConf's refusal of an override: check_composition makes it one line
        return check_composition(config_dir, overrides) or f"the overrides {extra} do not compose"
    values = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(values, dict)
    try:
        if not any(isinstance(node, dict) and node.get("_target_") for node in values.values()):
            validate(values, registered_names)  # (options of the user's own: each run checks them)
        if cfg.data.name == "mnist1d" and not cfg.pretrain.get("data"):
            return None  # (MNIST-1D is generated locally)
        load_arrays(cfg.data)
        if cfg.pretrain.get("data"):
            from backprop_lab.run.pretrain import pretrain_data

            load_arrays(pretrain_data(cfg))
    except RefusedError as err:
        return str(err) if setting == "mnist1d" else f"--setting {setting}: {err}"
    return None


def sweep_runner(req: Any, plan: Plan, extra: list[str], commands: list[str], commands_file: Path) -> RunSweep:
    """The `run_sweep` a study's sweeps call for one section (`req`: sections.Request): each sweep
    `backprop-lab train -m` in this process, into plan.folder/LABEL, its command added to commands.md."""
    where, launcher = plan.setting, req.launcher
    own = ["--config-dir", str(req.config_dir.resolve())] if req.config_dir is not None else []
    assert plan.folder is not None
    out = plan.folder

    def run_sweep(label: str, overrides: list[str], note: str | None = None) -> Path:
        folder = out / label
        staged = not any(o == "pretrain=none" for o in overrides)  # pretrain.* overrides only where there is a stage
        own_data = plan.setting.experiment.endswith("_real") or any(
            o.startswith("data=") for o in [*where.overrides, *extra]
        )
        smoke_args = [a for a in SMOKE if not (own_data and a.startswith("data.num_samples"))] if plan.smoke else []
        args = [
            "train",
            "-m",
            *own,
            f"hydra/launcher={launcher}",
            f"experiment={where.experiment}",
            *overrides,
            *smoke_args,
            *[e for e in [*where.overrides, *extra] if staged or not e.startswith("pretrain.")],
        ]
        shown = "backprop-lab " + " ".join(f"'{a}'" if "[" in a or "(" in a or a.startswith("~") else a for a in args)
        commands.append(f"- `{shown}`" + (f" ({note})" if note else ""))
        commands_file.write_text("\n".join(commands) + "\n")
        name = req.name
        print(f"[{name}] {folder.relative_to(req.out)}: {shown}", flush=True)
        with SweepProgress(f"[{name}] {folder.relative_to(req.out)}", folder, count_jobs(args[2:])):
            code = _sweep_in_process([*args[1:], f"hydra.sweep.dir={folder}"], out / f"{label}.log")
        if code == 130:  # Ctrl-C / SIGTERM: the runs checkpointed and stopped; so does the study
            raise KeyboardInterrupt
        if code != 0:
            print(f"[{name}] {label}: some runs did not complete (see {out / (label + '.log')})", flush=True)
        return folder

    return run_sweep


def miniature(where: Setting, smoke: bool, seeds: int, extra: list[str], config_dir: Path | None) -> str | None:
    """The banner of a study run with fewer seeds or steps than its protocol; None for the protocol."""
    from backprop_lab.run.job_check import compose_train

    protocol = compose_train([f"experiment={where.experiment}"], config_dir).trainer.max_steps
    given = [o.split("=", 1)[1] for o in [*(SMOKE if smoke else []), *extra] if o.startswith("trainer.max_steps=")]
    steps = int(given[-1]) if given and given[-1].isdigit() else protocol
    if not smoke and seeds >= SEEDS and (protocol is None or steps >= protocol):
        return None
    return (
        f"miniature: {seeds} seeds x {steps} steps (the protocol: {SEEDS} seeds x {protocol} steps); "
        "it tests the pipeline and is no evidence for or against the claim"
    )


def setting_line(setting: str, where: Setting, extra: list[str], runs: list[Run]) -> str:
    """What the runs were measured on: the preset's description, or, where the user's overrides replace
    its data or model, what the runs themselves record instead."""
    ran = next((r.settings for r in runs if r.settings.get("data")), {})
    own = " ".join(extra)
    if not any(o.lstrip("+").startswith(("data=", "data.path=", "model=")) for o in extra):  # (data.root: where)
        return f"{setting}: {where.description} (`experiment={where.experiment}`" + (f" `{own}`)." if own else ").")
    measured = ", ".join(f"{k}={ran[k]}" for k in ("data", "model") if k in ran)
    return (
        f"your own: {measured or 'as your overrides say'}, from `{own}` on the protocol of "
        f"`experiment={where.experiment}` (its {setting} data and model replaced)."
    )


def reproduce(name: str, out: Path, runs: list[Run]) -> str:
    """What the numbers were measured with (from the runs' own summary.json) and how to get them again."""
    import json

    summaries = []
    for run in runs:
        try:
            summaries.append(json.loads((run.path / "summary.json").read_text()))
        except (OSError, ValueError):
            continue
    versions: dict[str, str] = next((s["versions"] for s in summaries if s.get("versions")), {})
    devices = sorted({str(s.get("device")) for s in summaries if s.get("device")})
    seeds = sorted({r.seed for r in runs if r.seed is not None})
    shown = ", ".join(f"{k} {v}" for k, v in versions.items() if k in ("backprop-lab", "torch", "python", "hydra-core"))
    return "\n".join(
        [
            "### Reproduce",
            "",
            f"- Measured with {shown or 'unknown versions'}, on {', '.join(devices) or 'an unknown device'}; "
            f"{len(runs)} runs, seeds {', '.join(map(str, seeds))}.",
            "- The sweeps above, in that order, rerun every number; the report is computed from the run folders:",
            f"  `backprop-lab study {name} --report-only --out {out}` recomputes this verdict from them.",
        ]
    )
