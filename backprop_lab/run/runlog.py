"""The run folder: metrics.jsonl (appended and flushed as training goes), summary.json, weights.

Readers (compare, report, resume) depend only on these files, never on the engine.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import time
from pathlib import Path
from typing import Any


def _clean(value: Any) -> Any:
    """JSON has no NaN/inf: write them as null so every reader can parse the line."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def write_json_atomic(path: Path, data: Any) -> None:
    """Write to a temp file and rename over `path`, so a reader never sees half a file (and a write that
    fails leaves no temp file)."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "w") as f:
            json.dump(_clean(data), f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Every complete row of a metrics.jsonl; a torn last line (a killed run) is skipped, and so is a
    line that is not one of its rows (not an object with a stage and a split: an edit, a damaged file)."""
    rows = []
    with open(path) as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and isinstance(row.get("stage"), str) and isinstance(row.get("split"), str):
                rows.append(row)
    return rows


def rewrite_metrics(path: Path, rows: list[dict[str, Any]]) -> None:
    """Replace metrics.jsonl by `rows` atomically (resume drops what it will write again)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.writelines(json.dumps(_clean(row)) + "\n" for row in rows)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for dist in ("backprop-lab", "torch", "hydra-core", "omegaconf", "numpy", "mnist1d", "scikit-learn"):
        with contextlib.suppress(PackageNotFoundError):  # not installed: not listed
            found[dist] = version(dist)
    return found


class RunLog:
    """Writes one run's files into `run_dir`, and nothing outside it."""

    def __init__(self, run_dir: Path):
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._metrics = open(self.dir / "metrics.jsonl", "a")  # noqa: SIM115 (open for the run's life; close() closes it)
        self.started = time.time()
        self.trackers: list[Any] = []  # trackers.attach: TensorBoard, MLflow, an Optuna trial; each gets every row

    def metrics(self, **row: Any) -> None:
        self._metrics.write(json.dumps(_clean(row)) + "\n")
        self._metrics.flush()
        for tracker in self.trackers:
            tracker.metrics(row)

    def stop_requested(self) -> str | None:
        """Why a tracker asks the run to stop now (an Optuna pruner: 'pruned'), or None."""
        return next((t.stop for t in self.trackers if getattr(t, "stop", None)), None)

    def summary(self, **fields: Any) -> None:
        write_json_atomic(self.dir / "summary.json", fields)

    def weights_path(self, name: str) -> Path:
        (self.dir / "weights").mkdir(exist_ok=True)
        return self.dir / "weights" / name

    def close(self, summary: dict[str, Any], params: dict[str, Any]) -> None:
        """The run has ended: its trackers get the summary (and `params`, TensorBoard's hparams)."""
        self._metrics.close()
        for tracker in self.trackers:
            tracker.finish(summary, params)
