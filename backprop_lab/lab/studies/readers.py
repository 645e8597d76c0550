"""Reading the measurements a verdict needs from run folders (files only)."""

from __future__ import annotations

from typing import Any

from backprop_lab.lab.compare import Run, canonical, metrics_rows


# ------------------------------------------------------------------ reading the measurements
def completed(runs: list[Run], **settings: str) -> list[Run]:
    wanted = {k: canonical(v) for k, v in settings.items()}
    return [r for r in runs if r.status == "completed" and all(r.settings.get(k) == v for k, v in wanted.items())]


def values(runs: list[Run], metric: str) -> list[float]:
    return [r.metrics[metric] for r in runs if isinstance(r.metrics.get(metric), (int, float))]


def train_row(run: Run, which: int, stage: str | None = None) -> dict[str, Any]:
    """The first (0) or last (-1) train row of the run's final stage in metrics.jsonl."""
    rows = metrics_rows(run.path)
    stage = stage or (rows[-1]["stage"] if rows else None)
    train = [r for r in rows if r.get("stage") == stage and r.get("split") == "train"]
    return train[which] if train else {}


def row_at(run: Run, split: str, step: int, key: str) -> float | None:
    for r in metrics_rows(run.path):
        if r.get("split") == split and r.get("step") == step and r.get(key) is not None:
            return r[key]
    return None


def init_gradient_ratio(run: Run) -> float | None:
    """grad_norm of the first layer / grad_norm of the last layer at step 1 (the net at init)."""
    r = train_row(run, 0)
    norms = sorted((int(k.split("/")[1]), v) for k, v in r.items() if k.startswith("grad_norm/"))
    if not norms or not norms[-1][1]:
        return None
    return norms[0][1] / norms[-1][1]
