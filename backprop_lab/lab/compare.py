"""`backprop-lab compare`: pool run folders across seeds into one row per setting.

Reads only the files of the run-folder contract (.hydra/overrides.yaml, .hydra/config.yaml,
summary.json); never imports the engine or torch.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import functools
import io
import json
import math
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from backprop_lab.run.runlog import read_metrics

# Keys that never define a setting: seeds are what we pool over, the rest is presentation.
POOLED = {"seed", "trainer.progress", "trainer.save_weights", "trainer.threads"}


@dataclass
class Run:
    path: Path
    status: str  # completed | diverged | failed | interrupted | running | unfinished | damaged
    settings: dict[str, str]  # key -> value as the user wrote it (overrides + choices)
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    seed: int | None = None
    overrides: list[str] = field(default_factory=list)  # as the user wrote them
    warnings: list[str] = field(default_factory=list)  # a completed run's signs of a blow-up (instability.py)


def canonical(value: str) -> str:
    """A setting's value as the number it is, where it is one: 0, 0.0 and 0e0 all read "0", and 1e-2
    and 0.01 both "0.01", so runs of one setting written two ways pool into one row."""
    try:
        number = float(value.replace("_", "") if value.strip() else "nan")
    except ValueError:
        return value
    if not math.isfinite(number):
        return value
    return str(int(number)) if number.is_integer() and abs(number) < 2**53 else repr(number)


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: node}


def read_run(path: Path) -> Run:
    """One run folder; a missing or unreadable summary.json makes the run 'unfinished', not an error."""
    overrides: list[str] = []
    with contextlib.suppress(Exception):  # no or a damaged overrides.yaml: no settings from it
        overrides = list(OmegaConf.load(path / ".hydra" / "overrides.yaml"))
    settings = {}
    for item in overrides:
        key, _, value = str(item).lstrip("+~").partition("=")
        settings[key] = canonical(value)
    try:
        summary = json.loads((path / "summary.json").read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return Run(path, "unfinished", settings, overrides=[str(o) for o in overrides])
    if not isinstance(summary, dict):  # valid JSON, but not a run's summary
        error = f"summary.json is damaged: it holds a {type(summary).__name__}, not a run's summary"
        return Run(path, "damaged", settings, error=error, overrides=[str(o) for o in overrides])
    choices, given = summary.get("choices"), summary.get("metrics")
    for group, option in (choices if isinstance(choices, dict) else {}).items():
        settings.setdefault(group, canonical(str(option)))
    metrics = {k: v for k, v in (given if isinstance(given, dict) else {}).items() if isinstance(v, (int, float))}
    seed = summary.get("seed")
    return Run(
        path,
        str(summary.get("status", "unfinished")),
        settings,
        metrics,
        None if summary.get("error") is None else str(summary.get("error")),
        seed if isinstance(seed, int) else None,
        [str(o) for o in overrides],
        [str(w) for w in summary.get("warnings") or [] if isinstance(summary.get("warnings"), list)],
    )


def find_runs(paths: list[Path]) -> list[Run]:
    """Every run folder (one with .hydra/) at or below each path, in path order."""
    found: dict[Path, None] = {}
    for root in paths:
        candidates = [root] if (root / ".hydra").is_dir() else []
        candidates += sorted(p.parent.parent for p in root.rglob(".hydra/config.yaml"))
        for c in candidates:
            found.setdefault(c.resolve(), None)
    return [read_run(p) for p in found]


@functools.cache
def metrics_rows(run_path: Path) -> tuple[dict[str, Any], ...]:
    """A run's metrics.jsonl, parsed once per process however many plots and verdicts ask for it."""
    try:
        return tuple(read_metrics(run_path / "metrics.jsonl"))
    except OSError:
        return ()


def _fill_defaults(runs: list[Run], asked: list[str] | None = None) -> None:
    """A key set on the command line of some runs gets its composed value in the others; so does a key
    that `asked` names (a --filter or --by key that no run set on its command line)."""
    keys = {k for r in runs for k in r.settings} | set(asked or [])
    for run in runs:
        missing = keys - set(run.settings)
        if not missing:
            continue
        try:
            flat = _flatten(OmegaConf.to_container(OmegaConf.load(run.path / ".hydra" / "config.yaml")))
        except Exception:
            flat = {}
        for key in missing:
            value = flat.get(key, flat.get(f"{key}.name"))  # a group's choice is its node's name
            run.settings[key] = "" if value is None else canonical(str(value))


def varying_keys(runs: list[Run]) -> list[str]:
    """Keys whose value differs between runs; a folder with no readable settings decides nothing."""
    readable = [r for r in runs if any(r.settings.values())]
    keys = sorted({k for r in readable for k in r.settings} - POOLED)
    return [k for k in keys if len({r.settings.get(k, "") for r in readable}) > 1]


@dataclass
class Stat:
    n: int
    mean: float | None
    std: float | None
    ci_low: float | None
    ci_high: float | None


def pooled(measured: list[float | None], confidence: float = 0.95) -> Stat:
    """Mean, sample std and the Student-t confidence interval of the mean (missing values left out)."""
    values = [v for v in measured if v is not None and math.isfinite(v)]
    n = len(values)
    if n == 0:
        return Stat(0, None, None, None, None)
    mean = statistics.fmean(values)
    if n == 1:
        return Stat(1, mean, None, None, None)
    from scipy import stats

    std = statistics.stdev(values)
    if std == 0:  # identical values: scipy would return nan; the interval is the point itself
        return Stat(n, mean, 0.0, mean, mean)
    low, high = stats.t.interval(confidence, n - 1, loc=mean, scale=std / math.sqrt(n))
    return Stat(n, mean, std, float(low), float(high))


@dataclass
class Row:
    setting: dict[str, str]
    runs: list[Run]
    stats: dict[str, Stat]

    @property
    def statuses(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for r in self.runs:
            counts[r.status] = counts.get(r.status, 0) + 1
        return counts

    @property
    def status_text(self) -> str:
        """'3 completed' or '2 completed, 1 diverged'; completed runs with warnings are counted too
        ('3 completed (1 unstable)'): their numbers are in the statistics, and the reader should know."""
        text = ", ".join(f"{v} {k}" for k, v in sorted(self.statuses.items()))
        unstable = sum(1 for r in self.runs if r.status == "completed" and r.warnings)
        return text + (f" ({unstable} unstable)" if unstable else "")


def compare(
    runs: list[Run], metrics: list[str], by: list[str] | None = None, filters: list[str] | None = None
) -> tuple[list[str], list[Row]]:
    """Group runs by the settings that vary (or `by`), pooling the rest; statistics over completed runs."""
    _fill_defaults(runs, [*(by or []), *(f.partition("=")[0] for f in filters or [])])
    for f in filters or []:
        key, _, value = f.partition("=")
        runs = [r for r in runs if r.settings.get(key) == canonical(value)]
    columns = by or varying_keys(runs)
    groups: dict[tuple[str, ...], list[Run]] = {}
    for run in runs:
        groups.setdefault(tuple(run.settings.get(k, "") for k in columns), []).append(run)
    rows = []
    for setting, members in groups.items():
        done = [r for r in members if r.status == "completed"]
        rows.append(
            Row(
                dict(zip(columns, setting, strict=True)),
                members,
                {m: pooled([r.metrics.get(m) for r in done]) for m in metrics},
            )
        )
    return columns, rows


def _listed(names: Any, most: int = 12) -> str:
    names = sorted(set(names))
    return ", ".join(names[:most]) + (f" (and {len(names) - most} more)" if len(names) > most else "")


def request_problem(
    runs: list[Run],
    metrics: list[str],
    by: list[str] | None = None,
    filters: list[str] | None = None,
    sort: str | None = None,
) -> str | None:
    """One line naming what the request asks for that the runs do not have (a metric, a --by or --filter
    key, a filter value no run has, a sort key that is neither a metric nor a column), else None. Call it
    after `compare` has filled each run's settings."""
    known = {m for r in runs for m in r.metrics}
    for m in metrics:
        if known and m not in known:  # (no run completed: the table still shows their statuses)
            return f"--metric {m}: no run has this metric; the runs have: {_listed(known)}"
    keys = {k for r in runs for k, v in r.settings.items() if v != ""}
    for key in by or []:
        if key not in keys:
            return f"--by {key}: no run has this setting; settings: {_listed(keys)}"
    for f in filters or []:
        key, eq, value = f.partition("=")
        if not eq or not key:
            return f"--filter {f}: write KEY=VALUE, e.g. --filter act=relu"
        if key not in keys:
            return f"--filter {f}: no run has the setting {key}; settings: {_listed(keys)}"
        values = {r.settings[key] for r in runs if r.settings.get(key, "") != ""}
        if canonical(value) not in values:
            return f"--filter {f}: no run has {key}={value}; its values: {_listed(values)}"
    if sort is not None:
        key = sort.lstrip("-")
        columns = set(by) if by else set(varying_keys(runs))
        if key not in metrics and key not in columns:
            return (
                f"--sort {sort}: neither a metric of the table ({', '.join(metrics)}) nor one of its columns "
                f"({_listed(columns) or 'none: every run has the same settings'})"
            )
    return None


def _mean_or(mean: float | None, missing: float) -> float:
    return missing if mean is None else mean


def sort_rows(rows: list[Row], key: str, metrics: list[str]) -> list[Row]:
    descending = key.startswith("-")
    key = key.lstrip("-")
    if key in metrics:
        missing = math.inf if not descending else -math.inf
        ordered = sorted(rows, key=lambda r: _mean_or(r.stats[key].mean, missing))
    else:
        ordered = sorted(rows, key=lambda r: r.setting.get(key, ""))
    return ordered[::-1] if descending else ordered


def _num(v: float | None, digits: int = 4) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def records(columns: list[str], rows: list[Row], metrics: list[str]) -> list[dict[str, Any]]:
    out = []
    for row in rows:
        rec: dict[str, Any] = dict(row.setting)
        for m in metrics:
            s = row.stats[m]
            rec.update(
                {
                    f"{m} n": s.n,
                    f"{m} mean": s.mean,
                    f"{m} std": s.std,
                    f"{m} ci95_low": s.ci_low,
                    f"{m} ci95_high": s.ci_high,
                }
            )
        rec["runs"] = len(row.runs)
        rec["status"] = row.status_text
        out.append(rec)
    return out


def _text_cells(row: Row, metrics: list[str]) -> list[str]:
    cells = []
    for m in metrics:
        s = row.stats[m]
        spread = f" ± {_num(s.std)}" if s.std is not None else ""
        ci = f"[{_num(s.ci_low)}, {_num(s.ci_high)}]" if s.ci_low is not None else "-"
        cells += [str(s.n), f"{_num(s.mean)}{spread}", ci]
    return cells


def render(columns: list[str], rows: list[Row], metrics: list[str], fmt: str) -> str | None:
    """csv / json / markdown as text; None for the rich table (printed directly)."""
    n_label = (lambda m: "n") if len(metrics) == 1 else (lambda m: f"{m} n")
    header = list(columns) + [h for m in metrics for h in (n_label(m), f"{m} mean ± std", f"{m} 95% CI")] + ["status"]
    body = [[row.setting.get(c, "") for c in columns] + _text_cells(row, metrics) + [row.status_text] for row in rows]
    if fmt == "json":
        return json.dumps(records(columns, rows, metrics), indent=2)
    if fmt == "csv":
        buf = io.StringIO()
        recs = records(columns, rows, metrics)
        writer = csv.DictWriter(buf, fieldnames=list(recs[0]) if recs else columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(recs)
        return buf.getvalue()
    if fmt == "markdown":
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(cells) + " |" for cells in body]
        return "\n".join(lines)
    from rich.table import Table
    from rich.text import Text

    from backprop_lab.console import console

    table = Table(title=f"{sum(len(r.runs) for r in rows)} runs, {len(rows)} settings")
    for h in header:  # (Text: a value such as [l2,dropout] is shown as written, not read as markup)
        table.add_column(Text(h), justify="left" if h in columns or h == "status" else "right")
    for cells in body:
        table.add_row(*(Text(c) for c in cells))
    console.print(table)
    return None


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="backprop-lab compare", description="One row per setting, seeds pooled: n, mean ± std, 95% CI."
    )
    parser.add_argument("paths", nargs="+", type=Path, help="run folders, sweep folders, or parents of many")
    parser.add_argument("--metric", action="append", help="summary metric(s) to pool (default: test/acc)")
    parser.add_argument("--by", action="append", help="group by these keys instead of the ones that vary")
    parser.add_argument("--sort", help="a metric or a key to sort the rows by (--sort=-KEY: descending)")
    parser.add_argument("--descending", action="store_true", help="sort from the largest")
    parser.add_argument("--filter", action="append", metavar="KEY=VALUE", help="keep runs whose setting matches")
    parser.add_argument("--format", choices=("table", "csv", "json", "markdown"), default="table")
    args = parser.parse_args(argv)
    for p in args.paths:
        if not p.exists():
            print(f"error: {p} does not exist", file=sys.stderr)
            return 2
    runs = find_runs(args.paths)
    if not runs:
        print(f"error: no run folders (with .hydra/) under {', '.join(map(str, args.paths))}", file=sys.stderr)
        return 2
    metrics = args.metric or ["test/acc"]
    columns, rows = compare(runs, metrics, args.by, args.filter)
    problem = request_problem(runs, metrics, args.by, args.filter, args.sort)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    if args.sort:
        rows = sort_rows(rows, ("-" if args.descending else "") + args.sort, metrics)
    text = render(columns, rows, metrics, args.format)
    if text is not None:
        print(text, end="" if text.endswith("\n") else "\n")
    return 0
