"""Performance profiles (Dolan & Moré 2002, as AlgoPerf aggregates its workloads): for each method,
the fraction of workloads it solves within tau times the best method's time on that workload. A
method that never reaches a workload's target (time inf) does not solve it at any tau."""

from __future__ import annotations

import math
from pathlib import Path

TAU_MAX = 4.0  # AlgoPerf's: a method more than 4x slower than the best counts as not solving it


def ratios(times: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """times[method][workload] -> time / the best method's time on that workload (inf: not solved, or
    no method solved it)."""
    workloads = sorted({w for per in times.values() for w in per})
    best = {w: min((per.get(w, math.inf) for per in times.values()), default=math.inf) for w in workloads}
    return {
        method: {
            w: per.get(w, math.inf) / best[w] if math.isfinite(best[w]) and best[w] > 0 else math.inf for w in workloads
        }
        for method, per in times.items()
    }


def profile(times: dict[str, dict[str, float]], taus: list[float]) -> dict[str, list[float]]:
    """rho_method(tau): the fraction of the workloads whose time ratio is <= tau, at each tau."""
    found = ratios(times)
    return {
        method: [sum(r <= tau for r in per.values()) / len(per) if per else 0.0 for tau in taus]
        for method, per in found.items()
    }


def profile_plot(times: dict[str, dict[str, float]], out: Path, title: str) -> Path:
    """The profiles as steps over tau in [1, TAU_MAX], one line per method in the given order (the
    colours of report.PALETTE); each workload a tick of the y axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from backprop_lab.lab.report import _legend_below, _style

    taus = list(np.linspace(1.0, TAU_MAX, 301))
    rho = profile(times, taus)
    workloads = len({w for per in times.values() for w in per})
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (method, values) in enumerate(rho.items()):
        style = _style(i, len(taus))
        offset = (i - (len(rho) - 1) / 2) * 0.01  # (methods on the same step stay visible side by side)
        ax.step(taus, np.array(values) + offset, where="post", label=method, linewidth=2, **style)
    ax.set_xlim(1.0, TAU_MAX)
    ax.set_ylim(-0.05, 1.05)
    ax.set_yticks([k / workloads for k in range(workloads + 1)])
    ax.set_xlabel("tau: within this many times the best method's steps to the target")
    ax.set_ylabel(f"fraction of the {workloads} workloads")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    _legend_below(fig, ax)
    path = out / "performance_profile.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
