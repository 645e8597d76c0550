"""`backprop-lab report`: plots and report.md for a set of run folders (a sweep, say).

Reads metrics.jsonl and summary.json only. Curves are grouped by the settings that vary, with the
mean across seeds and a band of ± one standard deviation.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from backprop_lab.errors import RefusedError
from backprop_lab.lab.compare import Row, compare, find_runs, metrics_rows, render, request_problem

# Paul Tol's "muted" scheme (colour-blind safe) and three of Okabe & Ito's: 12 distinct hues; series
# past 12 repeat them with another line style (_style)
PALETTE = (
    "#332288", "#CC6677", "#117733", "#DDCC77", "#88CCEE", "#882255",
    "#44AA99", "#999933", "#AA4499", "#000000", "#E69F00", "#0072B2",
)  # fmt: skip
LINE_STYLES = ("-", "--", ":", "-.")
FEW_POINTS = 30  # a curve of this many points or fewer gets a marker on each (one point is a marker alone)


def _label(setting: dict[str, str]) -> str:
    return " ".join(f"{k}={v}" for k, v in setting.items()) or "all runs"


def _style(i: int, points: int) -> dict[str, Any]:
    """The i-th series' colour, line style and markers."""
    style: dict[str, Any] = {"color": PALETTE[i % len(PALETTE)], "linestyle": LINE_STYLES[i // len(PALETTE) % 4]}
    if points <= FEW_POINTS:
        style.update(marker="o", markersize=4 if points > 1 else 6)
    return style


def _natural(value: str) -> tuple[Any, ...]:
    """Sort key: numbers as numbers (0.001 < 0.01 < 0.1), then text."""
    try:
        return (0, float(value), "")
    except ValueError:
        return (1, 0.0, value)


def sorted_rows(rows: list[Row]) -> list[Row]:
    """The table's rows (and so the plots' legends) in the order of their settings, numbers as numbers."""
    return sorted(rows, key=lambda r: tuple(_natural(v) for v in r.setting.values()))


def _plain_ticks(ax: Any, log: bool, integer_x: bool = False, log_x: bool = False) -> None:
    """Tick labels as plain numbers (1.4, not 1.4x10^0), on log axes too; whole numbers on an index axis."""
    from matplotlib.ticker import LogFormatter, MaxNLocator

    class Plain(LogFormatter):
        """matplotlib's choice of which log ticks to label (minor ones only where the axis spans about a
        decade or less, so none overlap), written as plain numbers: 0.01, 0.2, 3."""

        def __call__(self, x: float, pos: Any = None) -> str:
            return f"{x:g}" if super().__call__(x, pos) else ""

    if log:
        ax.yaxis.set_major_formatter(Plain(labelOnlyBase=False))
        ax.yaxis.set_minor_formatter(Plain(labelOnlyBase=False, minor_thresholds=(1, 0.4)))
    if log_x:
        ax.xaxis.set_major_formatter(Plain(labelOnlyBase=False))
        ax.xaxis.set_minor_formatter(Plain(labelOnlyBase=False, minor_thresholds=(1, 0.4)))
    if integer_x:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _legend_below(fig: Any, ax: Any) -> None:
    """The legend under the panels, never on the data, its entries in the table's order, in as many
    columns (up to 3) as the figure's width holds at the longest label."""
    handles, labels = ax.get_legend_handles_labels()
    if labels:
        chars = fig.get_figwidth() * 16  # (8-point text: about 16 characters an inch)
        columns = max(1, min(3, len(labels), int(chars // (max(map(len, labels)) + 6))))
        fig.legend(handles, labels, loc="lower center", ncol=columns, fontsize=8, frameon=False)
        rows = -(-len(labels) // columns)
        fig.tight_layout(rect=(0, min(0.45, 0.035 * rows + 0.02), 1, 1))


def _final_stage_rows(run_path: Path) -> list[dict[str, Any]]:
    """metrics.jsonl rows of the run's last stage (the fine-tune stage of a pretrained run)."""
    rows = metrics_rows(run_path)
    if not rows:
        return []
    last = rows[-1]["stage"]
    return [r for r in rows if r.get("stage") == last]


def series(
    rows: list[Row], split: str, key: str, x: str = "step"
) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """label -> (x, mean, std) of `key` on `split`, over the runs of each row, at the steps they share."""
    out = {}
    for row in rows:
        curves = []
        for run in row.runs:
            points = {
                r["step"]: (r.get(x), r.get(key))
                for r in _final_stage_rows(run.path)
                if r.get("split") == split and r.get(key) is not None
            }
            if points:
                curves.append(points)
        if not curves:
            continue
        steps = sorted(set.intersection(*(set(c) for c in curves)))
        if not steps:
            continue
        xs = np.array([[c[s][0] for s in steps] for c in curves], dtype=float).mean(0)
        ys = np.array([[c[s][1] for s in steps] for c in curves], dtype=float)
        out[_label(row.setting)] = (xs, ys.mean(0), ys.std(0))
    return out


def _plot_band(
    ax: Any,
    data: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
    title: str,
    xlabel: str,
    labels: list[str],
    log: bool = False,
) -> None:
    """Each series' mean with a band of ± one std; `labels` fixes each setting's colour across panels."""
    for label, (x, mean, std) in data.items():
        style = _style(labels.index(label), len(x))
        low = mean - std
        if log:  # (a band reaching 0 would leave holes on a log axis: there, as far below in ratio as above)
            low = np.where(low > 0, low, mean**2 / (mean + std))
        ax.fill_between(x, low, mean + std, alpha=0.15, color=style["color"], linewidth=0)
        ax.plot(x, mean, label=label, **style)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    if log:
        ax.set_yscale("log")
    _plain_ticks(ax, log)
    ax.grid(alpha=0.3)


def learning_curves(rows: list[Row], out: Path, x: str) -> Path:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 8), sharex=True)  # (a single evaluation sits on the train axis)
    xlabel = "step" if x == "step" else "seconds"
    panels = (("train", "loss"), ("val", "loss"), ("train", "acc"), ("val", "acc"))
    labels = [_label(row.setting) for row in rows]
    for ax, (split, key) in zip(axes.flat, panels, strict=True):
        _plot_band(ax, series(rows, split, key, x), f"{split} {key}", xlabel, labels, log=key == "loss")
    legend_from = max(axes.flat, key=lambda ax: len(ax.get_legend_handles_labels()[1]))
    _legend_below(fig, legend_from)
    path = out / f"curves_{'steps' if x == 'step' else 'seconds'}.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def gradient_norms(rows: list[Row], out: Path) -> Path | None:
    """Per-layer gradient norm at the first logging point (init) and the last: the vanishing-gradient picture."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 5.5), sharey=True)
    drawn = False
    for ax, which in zip(axes, ("first", "last"), strict=True):
        for i, row in enumerate(rows):
            per_run = []
            for run in row.runs:
                train = [r for r in _final_stage_rows(run.path) if r.get("split") == "train" and "grad_norm/0" in r]
                if train:
                    r = train[0] if which == "first" else train[-1]
                    n = 1 + max(int(k.split("/")[1]) for k in r if k.startswith("grad_norm/"))
                    per_run.append([r.get(f"grad_norm/{i}", np.nan) for i in range(n)])
            if per_run:
                width = min(len(p) for p in per_run)
                values = np.array([p[:width] for p in per_run], dtype=float)
                with warnings.catch_warnings():  # a layer no run has a finite norm for (diverged runs) is a gap
                    warnings.simplefilter("ignore", RuntimeWarning)
                    mean = np.nanmean(values, 0)
                ax.plot(range(width), mean, label=_label(row.setting), **{**_style(i, width), "marker": "o"})
                drawn = True
        ax.set_title(f"gradient norm per layer, {'step 1 (init)' if which == 'first' else 'last logging point'}")
        ax.set_xlabel("layer (0 = input side)")
        ax.set_yscale("log")
        _plain_ticks(ax, log=True, integer_x=True)
        ax.grid(alpha=0.3)
    if not drawn:
        plt.close(fig)
        return None
    _legend_below(fig, axes[0])
    path = out / "grad_norms.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def gap_plot(rows: list[Row], out: Path) -> Path | None:
    import matplotlib.pyplot as plt

    data = series(rows, "val", "gap/acc")
    if not data:
        return None
    fig, ax = plt.subplots(figsize=(8, 5.5))
    labels = [_label(row.setting) for row in rows]
    _plot_band(ax, data, "train - validation accuracy (generalisation gap)", "step", labels)
    ax.set_xlim(left=0)  # (a single evaluation sits where it is in the run, not alone on its axis)
    _legend_below(fig, ax)
    path = out / "gap.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_report(
    paths: list[Path], out: Path, metrics: list[str], title: str = "backprop-lab report", verdict: str | None = None
) -> Path:
    import warnings

    import matplotlib

    matplotlib.use("Agg")  # headless: files only

    warnings.filterwarnings("ignore", message="Tight layout not applied")  # many legend entries: still a valid plot
    runs = find_runs(paths)
    if not runs:
        raise FileNotFoundError(f"no run folders (with .hydra/) under {', '.join(map(str, paths))}")
    columns, rows = compare(runs, metrics)
    rows = sorted_rows(rows)
    problem = request_problem(runs, metrics)
    if problem:
        raise RefusedError(problem)
    out.mkdir(parents=True, exist_ok=True)
    images = [
        learning_curves(rows, out, "step"),
        learning_curves(rows, out, "elapsed_s"),
        gradient_norms(rows, out),
        gap_plot(rows, out),
    ]
    lines = [f"# {title}", "", f"{len(runs)} runs from {', '.join(str(p) for p in paths)}.", ""]
    if verdict:
        lines += [verdict, ""]
    lines += [
        "## Results (seeds pooled: mean ± std, Student-t 95% CI of the mean)",
        "",
        render(columns, rows, metrics, "markdown") or "",
        "",
    ]
    unfinished = [r for r in runs if r.status != "completed"]
    if unfinished:
        lines += ["## Runs that did not complete", ""]
        lines += [f"- `{r.path}`: {r.status}" + (f" ({r.error})" if r.error else "") for r in unfinished]
        lines.append("")
    unstable = [r for r in runs if r.status == "completed" and r.warnings]
    if unstable:
        lines += ["## Completed runs whose loss blew up (their numbers are in the table)", ""]
        lines += [f"- `{r.path}`: {'; '.join(r.warnings)}" for r in unstable]
        lines.append("")
    lines += ["## Plots", ""]
    lines += [f"![{p.stem}]({p.name})" for p in images if p is not None]
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="backprop-lab report", description="report.md and PNG plots for run folders (a sweep, say)."
    )
    parser.add_argument("path", type=Path, help="a sweep folder, a run folder, or a parent of many")
    parser.add_argument("--out", type=Path, help="where to write (default: PATH itself)")
    parser.add_argument("--metric", action="append", help="summary metric(s) for the table (default: test/acc)")
    args = parser.parse_args(argv)
    if not args.path.exists():
        print(f"error: {args.path} does not exist", file=sys.stderr)
        return 2
    try:
        report = write_report([args.path], args.out or args.path, args.metric or ["test/acc"])
    except (FileNotFoundError, RefusedError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {report} and its plots")
    return 0
