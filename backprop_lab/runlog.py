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
    """Write to a temp file and rename over `path`, so a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        json.dump(_clean(data), f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Every complete line of a metrics.jsonl; a torn last line (a killed run) is skipped."""
    rows = []
    with open(path) as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
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
        self._tensorboard: Any = None

    def attach_tensorboard(self) -> None:
        """Also write TensorBoard event files (scalars, and hparams at the end) into the run folder."""
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            from .errors import ConfigError

            raise ConfigError(
                "logger", "tensorboard", "needs the tensorboard package: pip install 'backprop-lab[tensorboard]'"
            ) from None
        self._tensorboard = SummaryWriter(log_dir=str(self.dir))

    def metrics(self, **row: Any) -> None:
        self._metrics.write(json.dumps(_clean(row)) + "\n")
        self._metrics.flush()
        if self._tensorboard is not None and row.get("step") is not None:
            for key, value in row.items():
                if key not in ("step", "stage", "split") and isinstance(value, (int, float)) and math.isfinite(value):
                    self._tensorboard.add_scalar(f"{row['stage']}/{row['split']}/{key}", value, row["step"])

    def hparams(self, params: dict[str, Any], metrics: dict[str, Any]) -> None:
        if self._tensorboard is None:
            return
        clean = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in params.items()}
        finite = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}
        self._tensorboard.add_hparams(clean, finite, run_name="hparams")

    def summary(self, **fields: Any) -> None:
        write_json_atomic(self.dir / "summary.json", fields)

    def weights_path(self, name: str) -> Path:
        (self.dir / "weights").mkdir(exist_ok=True)
        return self.dir / "weights" / name

    def close(self) -> None:
        self._metrics.close()
        if self._tensorboard is not None:
            self._tensorboard.close()
