"""What a run prints: the chosen settings, progress while training, a table of results at the end."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

# Off a terminal (CI, a log file) rich would assume 80 columns and cut the results table.
console = Console(highlight=False, width=None if sys.stdout.isatty() else 120)
err_console = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 400)


def use_bar(mode: str) -> bool:
    if mode in ("plain", "off"):
        return False
    if mode == "bar":
        return True
    return sys.stdout.isatty() and not os.environ.get("CI")


def show_choices(choices: dict[str, str], extra: dict[str, Any]) -> None:
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold cyan")
    table.add_column()
    for key, value in [*choices.items(), *extra.items()]:  # (Text: [l2,dropout] shown as written, not as markup)
        table.add_row(Text(key), Text(str(value)))
    console.print(table)


def differing_overrides(overrides: list[list[str]]) -> dict[str, list[str]]:
    """{key: each job's value} for the command-line overrides whose values differ between the jobs
    (a key a job does not set reads '-'), in the order the jobs write them."""
    each = [dict(str(o).lstrip("+~").partition("=")[::2] for o in job) for job in overrides]
    keys = dict.fromkeys(k for e in each for k in e)
    return {k: [e.get(k, "-") for e in each] for k in keys if len({e.get(k, "-") for e in each}) > 1}


def _fmt(metrics: dict[str, float]) -> str:
    return "  ".join(f"{k} {v:.4g}" for k, v in metrics.items())


class StageProgress:
    """A rich bar on a terminal; plain lines (at evaluations) elsewhere; nothing when off."""

    def __init__(self, mode: str, label: str = ""):
        self.mode = mode
        self.label = label  # which job or member the line shows, e.g. "job 3" or "member 1 of 8: seed=0"
        self.bar = use_bar(mode)
        self._progress: Progress | None = None
        self.stage, self.total = "", 0
        self.latest: dict[str, float] = {}

    def start_stage(self, stage: str, total: int) -> None:
        self.stage, self.total, self.latest = stage, total, {}
        if self.label:
            self.stage = f"{stage}, {self.label}"
        if self.bar:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"),
                console=console,
                transient=False,
            )
            self._task = self._progress.add_task(escape(self.stage), total=total, info="")
            self._progress.start()

    def update(self, step: int, metrics: dict[str, float]) -> None:
        self.latest.update(metrics)
        if self._progress is not None:
            self._progress.update(self._task, completed=step, info=_fmt(self.latest))
        elif self.mode != "off" and any(k.startswith("val/") for k in metrics):
            console.print(f"[{self.stage}] step {step}/{self.total}  {_fmt(self.latest)}", markup=False)

    def end_stage(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def show_results(status: str, stages: list[dict[str, Any]], run_dir: str) -> None:
    table = Table(title=f"run {status}", title_style="bold green" if status == "completed" else "bold red")
    for col in ("stage", "steps", "seconds", "best step", "val/acc", "val/loss", "test/acc", "test/loss"):
        table.add_column(col, justify="left" if col == "stage" else "right")
    for s in stages:
        m = s["metrics"]

        def cell(key: str, m: dict[str, Any] = m) -> str:
            v = m.get(key)
            return "-" if v is None else f"{v:.4f}"

        table.add_row(
            Text(s["stage"]),
            str(s["steps"]),
            f"{s['seconds']:.1f}",
            str(s.get("best_step") or "-"),
            cell("val/acc"),
            cell("val/loss"),
            cell("test/acc"),
            cell("test/loss"),
        )
    console.print(table)
    console.print(f"run folder: {run_dir}", markup=False)


def show_jobs(summaries: list[dict[str, Any]], title: str, folder: str = "run folder") -> None:
    """One row per job: its folder (a sweep's job number first; a run folder last), the seed and the
    overrides in which the jobs differ, then the outcome."""
    differ = differing_overrides([s.get("overrides") or [] for s in summaries])
    differ.pop("seed", None)
    first = folder != "run folder"
    table = Table(title=title)
    columns = (*((folder,) if first else ()), "seed", *differ, "status", "steps", "best step", "val/acc", "test/acc")
    for col in (*columns, *(() if first else (folder,))):
        table.add_column(Text(col), justify="left" if col in ("status", folder, *differ) else "right")
    for k, s in enumerate(summaries):
        m = s.get("metrics") or {}
        where = Path(str(s.get("run_dir")))
        table.add_row(
            *((Text(where.name),) if first else ()),
            *(Text(str(v)) for v in (s.get("seed"), *(values[k] for values in differ.values()), s.get("status"))),
            str(s.get("steps", "-")),
            str(s.get("best_step") or "-"),
            *("-" if m.get(key) is None else f"{m[key]:.4f}" for key in ("val/acc", "test/acc")),
            *(() if first else (Text(str(where)),)),
        )
    console.print(table)


def show_members(summaries: list[dict[str, Any]]) -> None:
    """The results of a vectorized group: one row per member."""
    show_jobs(summaries, f"{len(summaries)} runs trained as one batched model")
