"""Finite but not sane: a run whose loss blew up without becoming NaN.

A non-finite loss stops a run as `diverged`. A learning rate just below that point can drive the logits
to huge values and back, so the run completes with a test loss of hundreds beside an accuracy that
looks ordinary. The numbers are computed right (confidently wrong logits cost that much), but a user
reading the table should be told. The yardstick is the chance-level loss: cross-entropy of a uniform
guess over C classes is ln C, and a trained model far above it has logits that grew without bound.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

# A final loss this many times ln C is not overfitting (heavily overfit nets sit at 1-4x): the logits
# blew up. A logged train loss this many times ln C at any point is a spike worth naming.
FINAL_FACTOR = 10.0
PEAK_FACTOR = 100.0
ADVICE = "lower optimizer.lr or set trainer.grad_clip"


def _peak_train_loss(metrics_path: Path, stage: str) -> tuple[float, int] | None:
    """The largest train-window loss logged in `stage` after its first row, with its step; None if
    nothing was. (The first row is the initial weights' loss: large there is the init's doing.)"""
    from backprop_lab.run.runlog import read_metrics

    if not metrics_path.exists():
        return None
    rows = [
        r
        for r in read_metrics(metrics_path)
        if r.get("stage") == stage and r.get("split") == "train" and isinstance(r.get("loss"), (int, float))
    ]
    if len(rows) < 2:
        return None
    top = max(rows[1:], key=lambda r: r["loss"])
    return float(top["loss"]), int(top.get("step", 0))


def loss_warnings(metrics: dict[str, Any], num_classes: int, metrics_path: Path, stage: str) -> list[str]:
    """One line per sign of a blow-up in a completed classification stage: final losses over
    FINAL_FACTOR x ln C, a logged train loss over PEAK_FACTOR x ln C. Empty when the run looks sane."""
    if num_classes < 2:
        return []
    chance = math.log(num_classes)
    yardstick = f"the chance-level loss ln({num_classes}) = {chance:.3f}"
    warnings = []
    finals = {k: v for k in ("train/loss", "val/loss", "test/loss") if isinstance(v := metrics.get(k), (int, float))}
    high = [f"{k} {v:.4g}" for k, v in finals.items() if math.isfinite(v) and v > FINAL_FACTOR * chance]
    if high:
        warnings.append(
            f"unstable: {', '.join(high)} over {FINAL_FACTOR:g}x {yardstick} "
            f"(the logits blew up; accuracy may still look ordinary): {ADVICE}"
        )
    peak = _peak_train_loss(metrics_path, stage)
    if peak is not None and peak[0] > PEAK_FACTOR * chance:
        loss, step = peak
        spike = f"train loss {loss:.4g} at step {step}"
        warnings.append(f"loss spike: {spike}, over {PEAK_FACTOR:g}x {yardstick}: {ADVICE}")
    return warnings
